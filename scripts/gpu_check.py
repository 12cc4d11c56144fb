#!/usr/bin/env python3
"""One-command GPU readiness check: placement, capacity and Sortformer cost, in one short lease.

    PYTHONPATH=. python scripts/gpu_check.py                       # on a GPU host: ~9 min, N = 16..256
    PYTHONPATH=. python scripts/gpu_check.py --device cpu          # rehearsal: same steps, N = 1..2, ~2 min
    PYTHONPATH=. python scripts/gpu_check.py --bundle gpu-bundle   # weights and clips from scripts/gpu_bundle.sh

Steps (each time-boxed; a failing step is recorded and the next one runs):
  environment  what imports (torch, CUDA, CTranslate2's CUDA build, NeMo) and the device's NVML facts
  placement    a real server on the device, 8 real-time connections: every `config` names the device,
               `/gpu-status` memory and utilisation sampled idle and under load
  gpu_pytest   `pytest -m gpu` (skips without CUDA)
  capacity     per backend (torch float16 tiny.en; base if its weights are at hand; faster-whisper if
               CTranslate2 loads): N real-time clients per level (scripts/bench_streams.py's client loop),
               commit lag p50/p95, WER, GPU utilisation and memory per extra connection, mean batch size,
               server CPU; the largest N with commit-lag p95 <= --max-lag-p95-s; batched vs
               `--max-batch-size 1` at one N
  sortformer   full-size Sortformer with random weights (CPU: the tiny one): RTF per stream, memory, and one
               capacity level with diarization on
  diarization  `--diarization` as the install at hand resolves `auto` (the shipped CAM++ diarizer where NeMo
               is missing): one capacity level with it against the same level without
Writes <out>/gpu-check.json and <out>/gpu-check.md; prints progress as it goes. Steps and their helpers:
scripts/gpu_check_steps.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import gpu_check_steps as steps  # noqa: E402
from gpu_check_report import markdown  # noqa: E402

# Levels per device: the GPU's are the issue's; the CPU's fit a rehearsal on 2 shared cores.
LEVELS = {"cuda": (16, 64, 128, 256), "cpu": (1, 2)}
LEVEL_DURATION_S = {"cuda": 25.0, "cpu": 6.0}
BATCH_COMPARE_N = {"cuda": 64, "cpu": 2}
# Seconds each step may take (the whole GPU run fits 9 minutes; the CPU rehearsal about 2).
STEP_BUDGET_S = {
    "cuda": {"environment": 30, "placement": 60, "gpu_pytest": 90, "capacity": 260, "sortformer": 90, "diarization": 70},
    # the CPU's are caps for busy shared cores (a server start alone took ~55 s at load average 14 on 2 cores)
    "cpu": {"environment": 60, "placement": 180, "gpu_pytest": 120, "capacity": 300, "sortformer": 240, "diarization": 120},
}


class Runner:
    """Runs steps in order under their time boxes; records each one's result or failure."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.report: Dict = {"device": args.device, "started_unix": round(time.time()), "steps": {}}

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {message}", flush=True)

    def remaining_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def step(self, name: str, fn: Callable[[steps.Context], Dict]) -> None:
        budget = min(STEP_BUDGET_S[self.args.device][name], self.remaining_s())
        if name not in self.args.steps:
            return
        if budget < 10:
            self.report["steps"][name] = {"status": "skipped", "reason": f"{self.remaining_s():.0f} s of the budget left"}
            self.log(f"{name}: skipped (budget)")
            return
        self.log(f"{name}: start (time box {budget:.0f} s)")
        started = time.monotonic()
        ctx = steps.Context(device=self.args.device, deadline=started + budget, log=self.log, args=self.args,
                            shared=self.report)
        try:
            result = {"status": "ok", **fn(ctx)}
        except Exception as exc:  # recorded; the next step runs
            error = f"{type(exc).__name__}: {exc}"
            result = {"status": "failed", "error": error if len(error) <= 5000 else error[:1000] + " ... " + error[-4000:],
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.monotonic() - started, 1)
        self.report["steps"][name] = result
        self.log(f"{name}: {result['status']} in {result['seconds']} s"
                 + (f" ({result['error'][:200]})" if result["status"] == "failed" else ""))
        self.write()

    def write(self) -> None:
        out: Path = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        self.report["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        (out / "gpu-check.json").write_text(json.dumps(self.report, indent=1, default=str))
        (out / "gpu-check.md").write_text(markdown(self.report))


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, default=Path("gpu-check-out"))
    p.add_argument("--bundle", type=Path, default=None,
                   help="folder built by scripts/gpu_bundle.sh (models/, clips/); default: installed packages and test audio")
    p.add_argument("--budget-s", type=float, default=None, help="whole run (default: 540 on cuda, 900 on cpu)")
    p.add_argument("--levels", default=None, help="comma-separated N per capacity level (default: 16,64,128,256 / 1,2)")
    p.add_argument("--duration-s", type=float, default=None, help="seconds each client streams per level")
    p.add_argument("--max-lag-p95-s", type=float, default=2.0)
    p.add_argument("--warmup-s", type=float, default=None,
                   help="seconds of unrecorded streaming at the first level's N on each fresh server (default: 10 on cuda, 0 on cpu)")
    p.add_argument("--no-stop-after-failure", action="store_true",
                   help="run every capacity level even after one fails to hold (default: stop at the first)")
    p.add_argument("--profile", action="store_true",
                   help="sample the server with py-spy (if on the PATH) during each capacity level: <out>/pyspy-*.txt "
                        "(raw stacks) and a top-functions summary in the report")
    p.add_argument("--steps", default="environment,placement,gpu_pytest,capacity,sortformer,diarization")
    args = p.parse_args(argv)
    args.steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    args.budget_s = args.budget_s or (540.0 if args.device == "cuda" else 900.0)
    args.levels = tuple(int(n) for n in args.levels.split(",")) if args.levels else LEVELS[args.device]
    args.duration_s = args.duration_s or LEVEL_DURATION_S[args.device]
    args.warmup_s = (10.0 if args.device == "cuda" else 0.0) if args.warmup_s is None else args.warmup_s
    args.batch_compare_n = BATCH_COMPARE_N[args.device] if BATCH_COMPARE_N[args.device] in args.levels else args.levels[-1]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    runner = Runner(args)
    runner.log(f"gpu_check on {args.device}: levels {args.levels}, {args.duration_s:.0f} s each, budget {args.budget_s:.0f} s, "
               f"out {args.out}")
    runner.step("environment", steps.environment)
    runner.step("placement", steps.placement)
    runner.step("gpu_pytest", steps.gpu_pytest)
    runner.step("capacity", steps.capacity)
    runner.step("sortformer", steps.sortformer)
    runner.step("diarization", steps.diarization)
    runner.write()
    failed = [name for name, r in runner.report["steps"].items() if r["status"] == "failed"]
    runner.log(f"done in {runner.report['elapsed_s']} s; failed steps: {', '.join(failed) or 'none'}; "
               f"report {args.out / 'gpu-check.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
