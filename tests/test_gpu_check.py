"""The GPU readiness check, rehearsed on the CPU: `scripts/gpu_check.py --device cpu` runs every step
against real servers and writes a JSON and a markdown report holding real figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow
RUN_FIRST = True  # about 2.5 min: conftest starts it first


def test_cpu_rehearsal_runs_every_step_and_reports_real_figures(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--levels", "1", "--duration-s", "4", "--warmup-s", "3",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    report = json.loads((out / "gpu-check.json").read_text())
    steps = report["steps"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert list(steps) == ["environment", "placement", "gpu_pytest", "capacity", "sortformer", "diarization"]
    assert all(s["status"] == "ok" for s in steps.values()), {k: v.get("error") for k, v in steps.items()}

    assert steps["environment"]["cuda_available"] is False and steps["environment"]["packages"]["fastapi"]
    placement = steps["placement"]
    assert placement["config_devices"] == ["cpu"] * placement["connections"]
    assert placement["transcripts_nonempty"] == placement["connections"] and placement["server_cpu_pct"] > 0
    assert steps["gpu_pytest"]["counts"].get("skipped", 0) >= 1 and not steps["gpu_pytest"]["counts"].get("failed")

    warmup = steps["capacity"]["variants"]["torch tiny.en"]["warmup"]  # streamed, kept apart from the levels
    assert warmup["n"] == 1 and warmup["seconds"] == 3
    level = steps["capacity"]["variants"]["torch tiny.en"]["levels"][0]
    assert level["n"] == 1 and level["admitted"] >= 1 and level["refused"] == 0
    assert level["commit_lag_n"] >= 1 and 0 < level["commit_lag_p50_s"] < 30
    assert level["wer_mean"] is not None and level["wer_mean"] < 0.5  # real speech, transcribed
    assert level["batch_size_mean"] == 1 and level["requests"] >= 1 and level["server_cpu_pct"] > 0

    sortformer = steps["sortformer"]
    assert sortformer["streams"] and all(0 < r["rtf_per_stream"] < 10 for r in sortformer["streams"])
    with_diarization = sortformer["capacity_with_diarization"]
    assert isinstance(with_diarization, dict) and with_diarization["with"]["commit_lag_p95_s"] is not None

    diarization = steps["diarization"]  # the default install's diarizer: CAM++ on the CPU
    assert diarization["auto_backend"] == "embedding" and "CPUExecutionProvider" in diarization["onnxruntime_providers"]
    with_embedding = diarization["capacity_with_diarization"]
    assert isinstance(with_embedding, dict) and with_embedding["with"]["commit_lag_p95_s"] is not None
    assert with_embedding["with"]["wer_mean"] is not None and with_embedding["with"]["wer_mean"] < 0.5

    md = (out / "gpu-check.md").read_text()
    assert "## Capacity" in md and "## Sortformer" in md and "| torch tiny.en | 1 |" in md
    assert "`auto` resolves to **embedding** here" in md
    assert f"{level['commit_lag_p95_s']:.3g}" in md
