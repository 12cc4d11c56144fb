"""The README's install, in a virtualenv of its own, is enough for the seed's command line.

A real venv (no `--system-site-packages`: that would hide a missing dependency) gets
`pip install "torch==2.13.0" .` and nothing else, then serves `--backend simulstreaming`
with `--diarization` (the CPU embedding diarizer ships its weights) on a real clip of two
voices. pip takes its wheels from the machine's wheel cache and index as any install does.
Building the venv takes 1-3 minutes, so the whole module is slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, pace, run, wait_healthy
from helpers import check_finished_stream
from whisperlivekit.client import stream

pytestmark = pytest.mark.slow
RUN_FIRST = True  # about 2 min (a virtualenv and an install): conftest starts it first

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "torch==2.13.0", str(REPO_ROOT)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _venv_python(venv: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=venv.parent, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


def test_the_install_holds_no_openai_whisper_and_no_triton(venv: Path):
    done = _venv_python(venv, "import importlib.util as u; print([m for m in ('whisper', 'triton') if u.find_spec(m)])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    where = _venv_python(venv, "import whisperlivekit; print(whisperlivekit.__file__)")
    assert where.stdout.startswith(str(venv)), "the test must run the installed package, not the checkout"


def test_the_seed_command_line_serves_a_clip_from_the_fresh_install(venv: Path, speech_pcm, tmp_path: Path):
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(venv / "bin" / "whisperlivekit-server"), "--host", "0.0.0.0", "--port", str(port),
             "--model", "tiny.en", "--backend", "simulstreaming", "--diarization", "--pcm-input"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
        )
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}", timeout_s=300, proc=server)
        except Exception:
            pytest.fail(f"the server did not start; log:\n{log_path.read_text(errors='replace')[-3000:]}")
        pcm, reference = speech_pcm("harvard")
        result = run(stream(f"ws://127.0.0.1:{port}/asr", pcm, pcm=True, speed=pace(3.0)))
        error_rate = check_finished_stream(result, reference, 0.10)
        speakers = {line["speaker"] for update in result.updates[-1:] for line in update["lines"] if line["speaker"] > 0}
        print(f"fresh venv, simulstreaming + diarization, harvard: WER {error_rate:.1%}, speakers {sorted(speakers)}")
        assert len(speakers) >= 2, result.updates[-1]  # the clip alternates a man's and a woman's voice
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "AlignAtt on cpu" in log_path.read_text(errors="replace")
