#!/usr/bin/env python3
"""Which words make the commit-lag tail: one level of long live streams, repeated, for one or two checkouts.

    PYTHONPATH=. python scripts/bench_commit_tail.py --streams 14 --runs 3
    PYTHONPATH=. python scripts/bench_commit_tail.py --streams 14 --runs 3 --baseline-ref 9ef4495

Each run is one level of `bench_streams.py --loop --pause-s 0.5` in the shared mode (the same clients,
looped clips, server flags and seed, `--max-realtime-load=0` so that admission refuses no one), with a
server started for it. On the 2-core machine the commit-lag p95 at N = 14 of one commit moved by 0.3-0.4 s
between runs minutes apart, so a change is judged on several runs: `--baseline-ref REF` runs REF's server
(a temporary git worktree) and the working tree's in turn, `--runs` times each. The client records the words each
commit added to its line (`StreamResult.commit_texts`), so the report names the words that the tail (commits later
than `--tail-s`) is made of. Writes `--out` as JSON and prints, per run and code, p50 / p95, WER and the tail's commonest words.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_streams  # noqa: E402


def summarise_run(label: str, run: int, level: dict, tail_s: float) -> dict:
    sessions = [s for s in level["session_details"] if s["admitted"]]
    tail = collections.Counter(words for s in sessions for words, lag in zip(s["commit_texts"], s["commit_lags_s"])
                               if lag > tail_s)
    return {"code": label, "run": run, "n": level["commit_lag_n"], "lag_p50_s": level["commit_lag_p50_s"],
            "lag_p95_s": level["commit_lag_p95_s"], "wer": level["wer_mean"], "load": level["peak_realtime_load"],
            "tail_commits": sum(tail.values()), "tail_words": tail.most_common(8)}


def run_once(label: str, run: int, args, clips, offline, t0: float, cwd: Optional[str]) -> dict:
    result = bench_streams.run_mode("shared", args, clips, offline, t0, cwd=cwd, label=f"{label} run {run}")
    row = summarise_run(label, run, result["levels"][0], args.tail_s)
    print(f"{label} run {run}: lag p50 / p95 {row['lag_p50_s']:.2f} / {row['lag_p95_s']:.2f} s ({row['n']}), "
          f"WER {row['wer']:.3f}, {row['tail_commits']} commits over {args.tail_s} s: {row['tail_words'][:5]}", flush=True)
    return row


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=14, help="N concurrent looped streams")
    p.add_argument("--runs", type=int, default=3, help="runs per checkout")
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--pause-s", type=float, default=0.5, help="silence after each clip of the loop")
    p.add_argument("--tail-s", type=float, default=1.8, help="a commit later than this is in the tail")
    p.add_argument("--baseline-ref", help="git ref whose server runs first, --runs times")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeatable)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out/commit_tail.json"))
    args = p.parse_args(argv)
    # what run_mode reads: one level, every session kept
    args.server_arg = ["--max-realtime-load=0", *args.server_arg]
    args.streams, args.stop_after_failure, args.keep_sessions, args.max_lag_p95_s = [args.streams], False, True, 3.0

    t0 = time.monotonic()
    clips = {"loop": bench_streams.looped(bench_streams.load_clips(), args.duration_s, args.pause_s)}
    offline = bench_streams.offline_baseline(clips, args.model, "cpu")
    rows: List[dict] = []
    current = f"current {bench_streams.working_tree_commit()}"
    with contextlib.ExitStack() as stack:
        codes = [(current, None)]
        if args.baseline_ref:  # interleaved, baseline first: the machine's speed drifts over minutes
            path, commit = stack.enter_context(bench_streams.checkout(args.baseline_ref))
            codes.insert(0, (f"baseline {commit[:10]}", path))
        for run in range(1, args.runs + 1):
            for label, cwd in codes:
                rows.append(run_once(label, run, args, clips, offline, t0, cwd))

    summary = []
    for label in dict.fromkeys(r["code"] for r in rows):
        mine = [r for r in rows if r["code"] == label]
        summary.append({"code": label, "runs": len(mine),
                        "lag_p50_s_median": statistics.median(r["lag_p50_s"] for r in mine),
                        "lag_p95_s_median": statistics.median(r["lag_p95_s"] for r in mine),
                        "lag_p95_s_each": [round(r["lag_p95_s"], 3) for r in mine],
                        "wer_mean": statistics.mean(r["wer"] for r in mine)})
        s = summary[-1]
        print(f"{label}: {s['runs']} runs, median lag p50 / p95 {s['lag_p50_s_median']:.2f} / {s['lag_p95_s_median']:.2f} s "
              f"(p95 each: {s['lag_p95_s_each']}), WER {s['wer_mean']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"streams": args.streams[0], "duration_s": args.duration_s, "pause_s": args.pause_s,
                                    "offline_wer": offline["loop"]["wer"], "tail_s": args.tail_s, "summary": summary,
                                    "runs": rows}, indent=2))
    print(f"wrote {args.out} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
