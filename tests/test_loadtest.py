"""`scripts/loadtest.py` against a real server: one client for ~12 s (two clips and their finals, with room for a loaded machine), then its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import audio_assets
from conftest import running_server

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "loadtest.py"


@pytest.mark.slow
def test_one_client_for_twelve_seconds_writes_a_full_report(tmp_path):
    for clip in ("arctic_a0007", "arctic_a0009"):
        audio_assets.arctic(clip)  # skips the test if the recording is unavailable
    with running_server("--pcm-input") as server:
        run = subprocess.run(
            [sys.executable, str(SCRIPT), "--url", server.ws_url, "--clients", "1", "--ramp-s", "0", "--duration-s", "12",
             "--pcm", "--clips", "arctic_a0007,arctic_a0009", "--progress-s", "2", "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "streaming" in run.stdout and "commit lag" in run.stdout

    report = json.loads((tmp_path / "report.json").read_text())
    summary = report["summary"]
    assert summary["sessions"] >= 2 and summary["admitted"] == summary["sessions"]
    assert summary["refused_by_close_code"] == {} and summary["close_codes"] == {"1000": summary["admitted"]}
    assert summary["first_partial_s"]["p50"] < 5
    assert {"p50", "p95", "p99", "n"} <= set(summary["commit_lag_s"])
    assert set(summary["wer_by_clip"]) == {"arctic_a0007", "arctic_a0009"}
    assert all(w["mean"] < 0.3 for w in summary["wer_by_clip"].values())
    assert report["timeline"] and report["config"]["clients"] == 1
    assert {"client", "clip", "start_s", "end_s", "admitted", "close_code", "wer", "commit_lags_s"} <= set(report["sessions"][0])
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
