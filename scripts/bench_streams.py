#!/usr/bin/env python3
"""Benchmark: concurrent real-time streams, shared model pool vs one model per connection.

    PYTHONPATH=. python scripts/bench_streams.py --streams 1,2,4,6,8,10,12 --duration-s 60
    PYTHONPATH=. python scripts/bench_streams.py --quick          # smoke run: N = 1, 2, 4, short
    PYTHONPATH=. python scripts/bench_streams.py --baseline-ref main --streams 1,8,14 --duration-s 60

With `--baseline-ref REF` the two modes are REF (checked out into a temporary git worktree,
its server run from there) and the working tree, in the same invocation with the same clients,
clips and seed, level by level in turn (REF's N, the working tree's N, then the next N, a server
started for each); the report adds current/baseline ratios per N and the N = 1 latency of both
(first partial, commit-lag p95).

For each mode (the default shared pool, then `--model-per-connection`) the
script starts its own server (`--pcm-input --max-cpu-connections 64`, plus any
`--server-arg`), and for each N runs N clients that stream real speech at real
time: each loops over the Harvard, ARCTIC a0007 and a0009 clips for about
--duration-s seconds, one connection per clip, starting after a random 0-1 s.
With `--loop` each client instead streams the three clips back to back, looped to
at least --duration-s, in one connection (a long live stream, as issue #14 asks);
its offline WER is that of the same looped audio. `--pause-s` puts silence after each clip.

Per N it reports connection set-up (open -> config) p50/p95, first-partial
p50, commit lag p50/p95, WER (mean over clips; against the reference and
against an offline transcription of the same clip with the same model, beam 5),
refusals, the server's peak RSS and its growth per extra connection over N=1,
and on CUDA the device memory per connection. N "holds" when commit-lag p95 is
at most --max-lag-p95-s, mean WER <= 1.5 x offline WER + 0.02 and nothing was
refused. Writes report.json and lag_p95.png to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import psutil

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import audio_assets  # noqa: E402
from conftest import running_server, wer  # noqa: E402

from whisperlivekit.client import load_pcm16, pcm_to_float, stream  # noqa: E402

CLIP_NAMES = ("harvard", "arctic_a0007", "arctic_a0009")
BASE_FLAGS = ("--pcm-input", "--max-cpu-connections", "64")
MODES = {"shared": (), "per-connection": ("--model-per-connection",), "baseline": ()}
REPO = Path(__file__).resolve().parent.parent
WER_FACTOR, WER_SLACK = 1.5, 0.02


def log(message: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:7.1f} s] {message}", flush=True)


def load_clips() -> Dict[str, Tuple[bytes, str]]:
    """name -> (PCM s16le 16 kHz bytes, reference text)."""
    import pytest  # audio_assets reports a missing recording as a pytest skip

    clips = {}
    for name in CLIP_NAMES:
        try:
            path, reference = audio_assets.harvard() if name == "harvard" else audio_assets.arctic(name)
        except pytest.skip.Exception as exc:
            print(f"clip {name} unavailable: {exc}", file=sys.stderr)
            continue
        clips[name] = (load_pcm16(path), reference)
    if not clips:
        raise SystemExit("no clip available")
    return clips


def looped(clips: Dict[str, Tuple[bytes, str]], duration_s: float, pause_s: float = 0.0) -> Tuple[bytes, str]:
    """The clips back to back (`pause_s` of silence after each), repeated until at least `duration_s` long,
    with the joined reference."""
    pcm, reference = b"", []
    silence = bytes(2 * int(16000 * pause_s))
    while len(pcm) < duration_s * 2 * 16000:
        for clip_pcm, clip_reference in clips.values():
            pcm += clip_pcm + silence
            reference.append(clip_reference)
    return pcm, " ".join(reference)


def offline_baseline(clips: Dict[str, Tuple[bytes, str]], model: str, device: str) -> Dict[str, dict]:
    """Each clip transcribed in one piece, same model, beam 5: the WER floor streaming is compared with."""
    from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
    from whisperlivekit.config import Settings
    from whisperlivekit.runtime.model_pool import ModelPool

    path = ModelPool(Settings(model=model)).model_path()
    backend = FasterWhisperBackend(path, device=device)
    try:
        out = {}
        for name, (pcm, reference) in clips.items():
            text = backend.transcribe_offline(pcm_to_float(pcm), language="en")
            out[name] = {"text": text, "wer": wer(reference, text)}
        return out
    finally:
        backend.close()


def pct(values: List[float], q: float) -> Optional[float]:
    return round(float(np.percentile(values, q)), 3) if values else None


class Sampler:
    """Background sampling of the server's RSS and `/gpu-status` while a run is under way."""

    def __init__(self, server, period_s: float = 0.25) -> None:
        self.server, self.period_s = server, period_s
        self.peak_rss_mb = 0.0
        self.peak_load = 0.0
        self.peak_gpu_used_gb: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.server.proc.pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def gpu_status(self) -> Tuple[float, Optional[float]]:
        """(cpu realtime load, GPU memory used in GB or None)."""
        try:
            body = self.server.get("/gpu-status").json()
        except Exception:
            return 0.0, None
        loads = [d.get("realtime_load", 0.0) for d in body.get("devices", {}).values()]
        used = [g["used_memory_gb"] for g in body.get("gpus", []) if not g.get("simulated") and g.get("used_memory_gb") is not None]
        return max(loads, default=0.0), (sum(used) if used else None)

    def _run(self) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
            if time.monotonic() >= next_status:
                load, used = self.gpu_status()
                self.peak_load = max(self.peak_load, load)
                if used is not None:
                    self.peak_gpu_used_gb = max(self.peak_gpu_used_gb or 0.0, used)
                next_status = time.monotonic() + 2.0
            self._stop.wait(self.period_s)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def client(index: int, ws_url: str, clips: Dict[str, Tuple[bytes, str]], duration_s: float,
                 sessions: List[dict], rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0.0, 1.0))
    start = time.monotonic()
    names = list(clips)
    k = index  # clients start on different clips
    while time.monotonic() - start < duration_s:
        name = names[k % len(names)]
        k += 1
        pcm, reference = clips[name]
        session = {"client": index, "clip": name, "start_s": round(time.monotonic() - start, 2)}
        try:
            result = await stream(ws_url, pcm, pcm=True, speed=1.0)
            admitted = result.config is not None
            session.update(
                admitted=admitted, close_code=result.close_code, connect_s=result.connect_s if admitted else None,
                first_partial_s=result.first_partial_s, commit_lags_s=result.commit_lags_s,
                commit_texts=result.commit_texts, text=result.text,
                complete=result.ended_with_ready_to_stop,
            )
        except Exception as exc:  # refused handshake, timeout, reset
            session.update(admitted=False, error=f"{type(exc).__name__}: {exc}"[:200])
        sessions.append(session)
        if not session["admitted"]:
            await asyncio.sleep(1.0)


async def run_level(ws_url: str, n: int, clips, duration_s: float, seed: int) -> List[dict]:
    sessions: List[dict] = []
    rng = random.Random(seed)
    await asyncio.gather(*(client(i, ws_url, clips, duration_s, sessions, rng) for i in range(n)))
    return sessions


def summarise(n: int, sessions: List[dict], offline: Dict[str, dict], clips, sampler: Sampler,
              idle_rss_mb: float, idle_gpu_gb: Optional[float], max_lag_p95_s: float, elapsed_s: float) -> dict:
    admitted = [s for s in sessions if s["admitted"]]
    connects = [s["connect_s"] for s in admitted]
    partials = [s["first_partial_s"] for s in admitted if s.get("first_partial_s") is not None]
    lags = [lag for s in admitted for lag in s["commit_lags_s"]]
    scored = [s for s in admitted if s.get("complete")]
    wers = [wer(clips[s["clip"]][1], s["text"]) for s in scored]
    wers_vs_offline = [wer(offline[s["clip"]]["text"], s["text"]) for s in scored]
    offline_wers = [offline[s["clip"]]["wer"] for s in scored]
    refusals = len(sessions) - len(admitted)
    mean_wer = float(np.mean(wers)) if wers else None
    offline_mean = float(np.mean(offline_wers)) if offline_wers else None
    wer_limit = WER_FACTOR * offline_mean + WER_SLACK if offline_mean is not None else None
    lag_p95 = pct(lags, 95)
    reasons = []
    if refusals:
        reasons.append(f"{refusals} refused")
    if lag_p95 is None:
        reasons.append("no commit")
    elif lag_p95 > max_lag_p95_s:
        reasons.append(f"lag p95 {lag_p95:.2f} s > {max_lag_p95_s} s")
    if mean_wer is None:
        reasons.append("no completed session")
    elif mean_wer > wer_limit:
        reasons.append(f"WER {mean_wer:.3f} > {wer_limit:.3f}")
    if len(scored) < len(admitted):
        reasons.append(f"{len(admitted) - len(scored)} sessions without ready_to_stop")
    row = {
        "n": n, "elapsed_s": round(elapsed_s, 1), "sessions": len(sessions), "admitted": len(admitted), "refusals": refusals,
        "connect_p50_s": pct(connects, 50), "connect_p95_s": pct(connects, 95),
        "first_partial_p50_s": pct(partials, 50),
        "commit_lag_n": len(lags), "commit_lag_p50_s": pct(lags, 50), "commit_lag_p95_s": lag_p95,
        "wer_mean": round(mean_wer, 4) if mean_wer is not None else None,
        "wer_vs_offline_text_mean": round(float(np.mean(wers_vs_offline)), 4) if wers_vs_offline else None,
        "offline_wer_mean": round(offline_mean, 4) if offline_mean is not None else None,
        "wer_limit": round(wer_limit, 4) if wer_limit is not None else None,
        "idle_rss_mb": round(idle_rss_mb, 1), "peak_rss_mb": round(sampler.peak_rss_mb, 1),
        "peak_realtime_load": round(sampler.peak_load, 3),
        "holds": not [r for r in reasons if "without ready_to_stop" not in r],
        "fails_because": reasons,
    }
    if idle_gpu_gb is not None and sampler.peak_gpu_used_gb is not None:
        row["gpu_mb_per_connection"] = round((sampler.peak_gpu_used_gb - idle_gpu_gb) * 1024 / n, 1)
    return row


@contextmanager
def checkout(ref: str) -> Iterator[Tuple[str, str]]:
    """`ref` checked out (detached) into a temporary git worktree: yields (path, commit)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    path = tempfile.mkdtemp(prefix="wlk-baseline-")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", path, commit],
                   check=True, capture_output=True, text=True)
    try:
        yield path, commit
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", path], capture_output=True)


def working_tree_commit() -> str:
    """HEAD's short hash, with "+changes" where tracked files differ from it (the report names what it measured)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def run_mode(mode: str, args, clips, offline, t0: float, cwd: Optional[str] = None, label: Optional[str] = None,
             levels: Optional[List[int]] = None) -> dict:
    """One server for `mode` (from `cwd`: another checkout) and the `levels` (default: `args.streams`) in turn."""
    flags = (*BASE_FLAGS, *MODES[mode], "--model", args.model, *args.server_arg)
    mode = label or mode
    log(f"mode {mode}: starting server {' '.join(flags)}" + (f" from {cwd}" if cwd else ""), t0)
    rows: List[dict] = []
    with running_server(*flags, cwd=cwd) as server:
        log(f"mode {mode}: server pid {server.proc.pid} ready at {server.base_url}", t0)
        idle = Sampler(server)
        for n in args.streams if levels is None else levels:
            if skipped_after_failure(rows, n, args.stop_after_failure):
                log(f"mode {mode}: skipping N={n} (failed before, one more level already run)", t0)
                continue
            time.sleep(1.0)  # let the previous level's connections close
            idle_rss = idle.rss_mb()
            _, idle_gpu = idle.gpu_status()
            log(f"mode {mode}: N={n} streaming for ~{args.duration_s:.0f} s (idle RSS {idle_rss:.0f} MB, "
                f"load avg {os.getloadavg()[0]:.2f})", t0)
            started = time.monotonic()
            with Sampler(server) as sampler:
                sessions = asyncio.run(run_level(server.ws_url, n, clips, args.duration_s, seed=args.seed + n))
            row = summarise(n, sessions, offline, clips, sampler, idle_rss, idle_gpu, args.max_lag_p95_s,
                            time.monotonic() - started)
            row["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
            row["session_details"] = sessions if args.keep_sessions else None
            rows.append(row)
            log(f"mode {mode}: N={n} done: setup p50 {row['connect_p50_s']} s, lag p95 {row['commit_lag_p95_s']} s, "
                f"WER {row['wer_mean']} (limit {row['wer_limit']}), refused {row['refusals']}, "
                f"peak RSS {row['peak_rss_mb']:.0f} MB, load {row['peak_realtime_load']} -> "
                f"{'HOLDS' if row['holds'] else 'FAILS: ' + '; '.join(row['fails_because'])}", t0)
    largest, holding = finish_mode(rows)
    return {"mode": mode, "flags": list(flags), "levels": rows, "largest_n_holding": largest, "holding_levels": holding}


def skipped_after_failure(rows: List[dict], n: int, stop_after_failure: bool) -> bool:
    """With stop-after-failure, a mode runs one level past its first failing N, then no more."""
    failed = [r["n"] for r in rows if not r["holds"]]
    return stop_after_failure and bool(failed) and n > failed[0] and any(r["n"] > failed[0] for r in rows)


def run_against_baseline(args, clips, offline, t0: float) -> List[dict]:
    """REF's server and the working tree's, level by level in turn (REF first), each level on a server of its own.

    The 2-core machine's speed drifts over minutes: one commit's N = 14 p95 moved 0.3-0.9 s between runs. Run one
    curve after the other, and that drift lands between them; interleaved, both curves see it alike."""
    current = working_tree_commit()
    with checkout(args.baseline_ref) as (path, commit):
        codes = [("baseline", f"baseline {args.baseline_ref}", path, commit[:10]), ("shared", "current", None, current)]
        modes = {label: {"mode": label, "commit": sha, "levels": []} for _, label, _, sha in codes}
        for n in args.streams:
            for mode, label, cwd, _ in codes:
                measured = modes[label]["levels"]
                if skipped_after_failure(measured, n, args.stop_after_failure):
                    log(f"mode {label}: skipping N={n} (failed before, one more level already run)", t0)
                    continue
                result = run_mode(mode, args, clips, offline, t0, cwd=cwd, label=label, levels=[n])
                modes[label]["flags"] = result["flags"]
                measured += result["levels"]
    for mode in modes.values():
        mode["largest_n_holding"], mode["holding_levels"] = finish_mode(mode["levels"])
    return list(modes.values())


def ratios(shared: dict, per_conn: dict) -> List[dict]:
    by_n = {r["n"]: r for r in shared["levels"]}
    out = []
    for r in per_conn["levels"]:
        s = by_n.get(r["n"])
        if not s:
            continue

        def ratio(key, floor=0.0):
            a, b = r.get(key), s.get(key)
            return round(a / b, 2) if a is not None and b is not None and b > floor else None

        out.append({"n": r["n"], "setup_p50": ratio("connect_p50_s"), "lag_p50": ratio("commit_lag_p50_s"),
                    "lag_p95": ratio("commit_lag_p95_s"), "rss_per_extra_connection": ratio("rss_mb_per_extra_connection", floor=5.0),  # shared growth is ~0: noise
                    "rss_mb_per_extra_connection_per_conn_vs_shared": [r.get("rss_mb_per_extra_connection"),
                                                                      s.get("rss_mb_per_extra_connection")],
                    "rss_per_connection_over_idle": ratio("rss_mb_per_connection_over_idle")})
    return out


def baseline_ratios(baseline: dict, current: dict) -> List[dict]:
    """current / baseline per N, for the figures that matter (below 1: the working tree is better)."""
    by_n = {r["n"]: r for r in baseline["levels"]}
    out = []
    for c in current["levels"]:
        b = by_n.get(c["n"])
        if not b:
            continue

        def ratio(key):
            x, y = c.get(key), b.get(key)
            return round(x / y, 2) if x is not None and y else None

        out.append({"n": c["n"], "first_partial_p50": ratio("first_partial_p50_s"), "lag_p50": ratio("commit_lag_p50_s"),
                    "lag_p95": ratio("commit_lag_p95_s"), "wer": ratio("wer_mean"), "load": ratio("peak_realtime_load"),
                    "refused": [b["refusals"], c["refusals"]]})
    return out


def baseline_table(report: dict) -> str:
    baseline, current = report["modes"][0], report["modes"][1]
    lines = [f"current ({current['commit']}) / baseline ({baseline['commit']}):",
             "| N | 1st partial p50 | lag p50 | lag p95 | WER | peak load | refused (baseline, current) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["ratios_current_over_baseline"]:
        lines.append(f"| {r['n']} | {fmt(r['first_partial_p50'])} | {fmt(r['lag_p50'])} | {fmt(r['lag_p95'])} "
                     f"| {fmt(r['wer'])} | {fmt(r['load'])} | {r['refused'][0]}, {r['refused'][1]} |")
    for mode in (baseline, current):
        one = next((r for r in mode["levels"] if r["n"] == 1), None)
        if one is not None:
            lines.append(f"N = 1, {mode['mode']}: first partial p50 {fmt(one['first_partial_p50_s'])} s, "
                         f"commit lag p50/p95 {fmt(one['commit_lag_p50_s'])}/{fmt(one['commit_lag_p95_s'])} s, "
                         f"WER {fmt(one['wer_mean'], '.3f')}")
    return "\n".join(lines)


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(report: dict) -> str:
    head = ("| mode | N | setup p50/p95 s | 1st partial p50 s | lag p50/p95 s (n) | WER ref | offline | vs offline text "
            "| refused | peak RSS MB | RSS/extra conn MB | load | holds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in report["modes"]:
        for r in mode["levels"]:
            # private per-connection workers are not in the pool, so /gpu-status has no load for them
            load = "n/a" if mode["mode"] == "per-connection" else f"{r['peak_realtime_load']:.2f}"
            lines.append(
                f"| {mode['mode']} | {r['n']} | {fmt(r['connect_p50_s'])}/{fmt(r['connect_p95_s'])} | {fmt(r['first_partial_p50_s'])} "
                f"| {fmt(r['commit_lag_p50_s'])}/{fmt(r['commit_lag_p95_s'])} ({r['commit_lag_n']}) | {fmt(r['wer_mean'], '.3f')} "
                f"| {fmt(r['offline_wer_mean'], '.3f')} | {fmt(r['wer_vs_offline_text_mean'], '.3f')} | {r['refusals']} "
                f"| {r['peak_rss_mb']:.0f} | {fmt(r.get('rss_mb_per_extra_connection'), '.1f')} | {load} "
                f"| {'yes' if r['holds'] else 'no: ' + '; '.join(r['fails_because'])} |"
            )
    if any("gpu_mb_per_connection" in r for m in report["modes"] for r in m["levels"]):
        lines.append("")
        lines.append("GPU memory per connection (MB): " + ", ".join(
            f"{m['mode']} N={r['n']}: {r['gpu_mb_per_connection']}" for m in report["modes"] for r in m["levels"]
            if "gpu_mb_per_connection" in r))
    return "\n".join(lines)


def rss_cell(r: dict) -> str:
    per_conn, shared = r.get("rss_mb_per_extra_connection_per_conn_vs_shared") or (None, None)
    if per_conn is None or shared is None:
        return "-"
    ratio = f"{r['rss_per_extra_connection']:.1f}x" if r.get("rss_per_extra_connection") is not None else "shared ~0, no ratio"
    return f"{per_conn:.0f} vs {shared:.1f} ({ratio})"


def ratio_table(rows: List[dict]) -> str:
    lines = ["| N | set-up p50 | lag p50 | lag p95 | RSS per extra conn (MB, per-conn vs shared) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {fmt(r['setup_p50'])} | {fmt(r['lag_p50'])} | {fmt(r['lag_p95'])} "
                     f"| {rss_cell(r)} |")
    return "\n".join(lines)


def plot(report: dict, path: Path, max_lag_p95_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, marker in zip(report["modes"], ("o-", "s--")):
        pts = [(r["n"], r["commit_lag_p95_s"]) for r in mode["levels"] if r["commit_lag_p95_s"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker, label=f"{mode['mode']} (holds to N={mode['largest_n_holding']})")
    ax.axhline(max_lag_p95_s, color="red", lw=0.8, ls=":", label=f"limit {max_lag_p95_s} s")
    ax.set_xlabel("concurrent real-time streams (N)")
    ax.set_ylabel("commit lag p95 (s)")
    host = report["host"]
    load = f"{host['load_avg_start']}" + (f"-{host['load_avg_end']}" if host.get("load_avg_end") is not None else "")
    ax.set_title(f"{report['model']} on {host['device']}, 1-min load avg {load}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish_mode(rows: List[dict]) -> Tuple[Optional[int], List[int]]:
    """Fill RSS growth per extra connection (vs N=1) in place; return (largest N holding, holding levels)."""
    rows.sort(key=lambda r: r["n"])
    base = next((r for r in rows if r["n"] == 1), None)
    for row in rows:
        if base is not None and row["n"] > 1:
            row["rss_mb_per_extra_connection"] = round((row["peak_rss_mb"] - base["peak_rss_mb"]) / (row["n"] - 1), 1)
        row["rss_mb_per_connection_over_idle"] = round((row["peak_rss_mb"] - row["idle_rss_mb"]) / row["n"], 1)
    # "Largest N that holds": the largest N with every smaller measured N also holding.
    largest = None
    for r in rows:
        if not r["holds"]:
            break
        largest = r["n"]
    return largest, [r["n"] for r in rows if r["holds"]]


def merge_reports(reports: List[dict]) -> dict:
    """Levels of several runs in one report (the first run's N wins on duplicates); RSS growth is then across servers."""
    merged = dict(reports[0])
    merged["merged_from"] = [{"streams": r["streams"], "duration_s": r["duration_s"], "host": r["host"]} for r in reports]
    merged["host"] = dict(reports[0]["host"])
    merged["host"]["load_avg_start"] = min(r["host"]["load_avg_start"] for r in reports)
    merged["host"]["load_avg_end"] = max(r["host"].get("load_avg_end", 0) for r in reports)
    modes: Dict[str, dict] = {}
    for report in reports:
        for mode in report["modes"]:
            target = modes.setdefault(mode["mode"], {**mode, "levels": []})
            have = {r["n"] for r in target["levels"]}
            target["levels"] += [dict(r) for r in mode["levels"] if r["n"] not in have]
    for mode in modes.values():
        mode["largest_n_holding"], mode["holding_levels"] = finish_mode(mode["levels"])
    merged["modes"] = list(modes.values())
    merged["streams"] = sorted({n for r in reports for n in r["streams"]})
    return merged


def print_summary(report: dict) -> None:
    host = report["host"]
    print()
    print(table(report))
    if "ratios_per_connection_over_shared" in report:
        print("\nper-connection / shared:")
        print(ratio_table(report["ratios_per_connection_over_shared"]))
    if "ratios_current_over_baseline" in report:
        print()
        print(baseline_table(report))
    print()
    for m in report["modes"]:
        print(f"largest N that holds ({m['mode']}): {m['largest_n_holding']}")
    print(f"load: start {host['load_avg_start']}, end {host.get('load_avg_end')} ({host.get('uptime_end')})")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,2,4,6,8,10,12", help="comma-separated N values")
    p.add_argument("--duration-s", type=float, default=60.0, help="seconds each client keeps streaming per N")
    p.add_argument("--modes", default="shared,per-connection")
    p.add_argument("--baseline-ref", help="git ref to compare the working tree with (modes become REF and the working tree, level by level in turn)")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--device", default="cpu", help="device for the offline baseline (cpu or cuda)")
    p.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeatable), e.g. --server-arg=--min-chunk-size=0.5")
    p.add_argument("--max-lag-p95-s", type=float, default=3.0)
    p.add_argument("--no-stop-after-failure", dest="stop_after_failure", action="store_false",
                   help="run every N even after a mode failed (default: stop one level after the first failure)")
    p.add_argument("--keep-sessions", action="store_true", help="put every session in the JSON report")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--loop", action="store_true",
                   help="each client streams the clips looped to --duration-s in one connection (default: one connection per clip)")
    p.add_argument("--pause-s", type=float, default=0.0, help="with --loop: seconds of silence after each clip")
    p.add_argument("--quick", action="store_true", help="smoke run: N=1,2,4, 15 s each")
    p.add_argument("--from-json", type=Path, nargs="+",
                   help="only re-render table, ratios and plot from earlier report.json files (several: merged by N)")
    args = p.parse_args(argv)
    if args.from_json:
        report = merge_reports([json.loads(path.read_text()) for path in args.from_json])
        by_mode = {m["mode"]: m for m in report["modes"]}
        if "shared" in by_mode and "per-connection" in by_mode:
            report["ratios_per_connection_over_shared"] = ratios(by_mode["shared"], by_mode["per-connection"])
        if len(report["modes"]) == 2 and report["modes"][0]["mode"].startswith("baseline"):
            report["ratios_current_over_baseline"] = baseline_ratios(report["modes"][0], report["modes"][1])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
        plot(report, args.out / "lag_p95.png", report["criteria"]["commit_lag_p95_s_max"])
        print_summary(report)
        return 0
    if args.quick:
        args.streams, args.duration_s = "1,2,4", 15.0
    args.streams = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    modes = ["baseline", "shared"] if args.baseline_ref else [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {list(MODES)}")
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    cuda = False
    try:
        import ctranslate2

        cuda = ctranslate2.get_cuda_device_count() > 0
    except Exception:
        pass
    host = {"cpus": os.cpu_count(), "device": "CUDA" if cuda else f"{os.cpu_count()}-core CPU",
            "load_avg_start": round(os.getloadavg()[0], 2), "uptime": os.popen("uptime").read().strip()}
    log(f"host: {host['uptime']}", t0)
    clips = load_clips()
    if args.loop:
        clips = {"loop": looped(clips, args.duration_s, args.pause_s)}
    log(f"clips: {', '.join(f'{k} {len(v[0]) / 32000:.1f} s' for k, v in clips.items())}", t0)
    offline = offline_baseline(clips, args.model, args.device)
    for name, o in offline.items():
        log(f"offline {name}: WER {o['wer']:.3f}  {o['text']!r}", t0)

    report = {"model": args.model, "host": host, "streams": args.streams, "duration_s": args.duration_s, "loop": args.loop, "pause_s": args.pause_s,
              "criteria": {"commit_lag_p95_s_max": args.max_lag_p95_s, "wer": f"<= {WER_FACTOR} x offline + {WER_SLACK}",
                           "refusals": 0},
              "offline": offline, "modes": []}
    if args.baseline_ref:
        report["modes"] = run_against_baseline(args, clips, offline, t0)
        report["baseline_ref"] = args.baseline_ref
        report["ratios_current_over_baseline"] = baseline_ratios(report["modes"][0], report["modes"][1])
    else:
        for mode in modes:
            result = run_mode(mode, args, clips, offline, t0)
            result["commit"] = working_tree_commit()
            report["modes"].append(result)
    by_mode = {m["mode"]: m for m in report["modes"]}
    if "shared" in by_mode and "per-connection" in by_mode:
        report["ratios_per_connection_over_shared"] = ratios(by_mode["shared"], by_mode["per-connection"])
    host["load_avg_end"] = round(os.getloadavg()[0], 2)
    host["uptime_end"] = os.popen("uptime").read().strip()
    for m in report["modes"]:
        for r in m["levels"]:
            if r.get("session_details") is None:
                r.pop("session_details", None)

    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print_summary(report)
    plot(report, args.out / "lag_p95.png", args.max_lag_p95_s)
    print(f"wrote {args.out / 'report.json'} and {args.out / 'lag_p95.png'} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
