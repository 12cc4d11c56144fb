"""`--backend torch` served live: real speech streamed to a real server, held to the LocalAgreement WER bounds."""

from __future__ import annotations

import pytest

from conftest import pace, run, running_server
from helpers import check_finished_stream
from whisperlivekit.client import stream

pytest.importorskip("torch")

# The bounds the faster-whisper live tests use (tests/test_live_transcription.py).
CLIPS = [
    ("harvard", 0.10),
    ("arctic_a0007", 0.10),
    ("arctic_a0009", 0.10),
]
# Not the narrow-band phone call: live at float32 it measured 17-41 % across runs (faster-whisper at float32 too:
# 24-41 %; int8: 16-23 %), so any bound either flakes or checks nothing. The torch backend's own correctness on
# it is exact equality with faster-whisper float32 offline (tests/test_torch_backend.py); the spread is reported
# in docs/backends.md.


@pytest.fixture(scope="module")
def torch_server():
    with running_server("--pcm-input", "--backend", "torch") as server:
        yield server


def test_health_names_the_torch_backend_and_the_log_shows_it_loaded(torch_server):
    assert torch_server.get("/health").json()["backend"] == "torch"
    assert "(torch) on cpu" in torch_server.log()


@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_torch_backend_stream_is_transcribed_within_wer_bound(torch_server, speech_pcm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    result = run(stream(torch_server.ws_url, pcm, pcm=True, speed=pace(3.0)))
    error_rate = check_finished_stream(result, reference, max_wer)
    print(f"torch {clip}: WER {error_rate:.1%}")


def test_without_ctranslate2_backend_auto_serves_with_torch(tmp_path, speech_pcm):
    """The lent GPU host has torch and no CTranslate2: `--backend auto` must not name faster-whisper there."""
    import os

    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.modules['ctranslate2'] = None  # import fails, find_spec says missing: as if not installed\n"
        "sys.modules['faster_whisper'] = None\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    with running_server("--pcm-input", env={"PYTHONPATH": path}) as server:
        assert server.get("/health").json()["backend"] == "torch"
        pcm, reference = speech_pcm("harvard")
        result = run(stream(server.ws_url, pcm, pcm=True, speed=pace(3.0)))
        check_finished_stream(result, reference, 0.10)
