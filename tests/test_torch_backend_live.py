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
