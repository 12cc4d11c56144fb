#!/usr/bin/env python3
"""Benchmark: the server's own CPU cost per stream, with Whisper replaced by a stand-in that answers at once.

    PYTHONPATH=. python scripts/bench_overhead.py --levels 8,16,32,64,128 --duration-s 20

On a GPU host the device may not be what caps a process: one Python process does the WebSocket I/O,
PCM decoding, VAD, policy bookkeeping and JSON of every stream. This measures that work without a GPU.
The server is the real one (real uvicorn with the server's own protocol classes, real FastAPI routes,
real Silero VAD, the LocalAgreement policy, the protocol's JSON) except for the Whisper backend:
`InstantStandInBackend` (defined here, benchmark only: it is in no backends table and no flag selects it)
returns words on a 0.5 s grid at once. Clients are real WebSocket clients streaming PCM at real time
(scripts/bench_streams.py's loop), in this process; the server runs in a subprocess (`--serve`).

Per level: server CPU ms per stream-second (process CPU / audio received), split by stage, the event
loop's lag (a 20 ms ticker in the server loop), commit lag; stops once loop-lag p95 passes --max-loop-lag-ms.
Stage timers wrap, in the server process only: receive (WebSocket protocol `data_received`), decode
(`pcm16_to_float32`), VAD (`SileroVadModel.process_many`, or `VadStream.process` before it; worker thread), policy (LocalAgreement methods),
snapshot (`TranscriptionEngine.snapshot`), JSON (`json.dumps` in starlette's `send_json`), send (the
WebSocket protocol's `send`), stand-in (the backend); "other" is the rest of the process's CPU time
(event loop, tasks, engine glue, HTTP). Full-mode updates (every update re-sends all lines).
Writes report.json to --out and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

STAGES = ("receive", "decode", "vad", "policy", "snapshot", "json", "send", "stand-in")
WORDS = ("the", "birch", "canoe", "slid", "on", "smooth", "planks", "glue", "sheet", "to", "dark", "blue",
         "background", "easy", "tell", "depth", "of", "a", "well", "four", "hours", "steady", "work", "faced")
GRID_S = 0.5


class InstantStandInBackend:
    """BENCHMARK ONLY: stands in for Whisper and answers at once, so only the server's own work is measured.

    One word per complete 0.5 s of the request's audio, its text picked by the chunk's samples (the same
    audio gives the same word, so LocalAgreement agrees and commits as it would with a real model).
    """

    name = "instant-stand-in"
    model_label = "instant-stand-in (benchmark only)"

    def __init__(self, device: str) -> None:
        self.device = device

    def transcribe_batch(self, requests):
        from whisperlivekit.asr.types import TranscribeResult, Word

        results = []
        for request in requests:
            step = int(GRID_S * 16000)
            words = []
            for k in range(len(request.audio) // step):
                chunk = request.audio[k * step:(k + 1) * step]
                text = WORDS[int(abs(float(chunk[::64].sum())) * 1000) % len(WORDS)]
                words.append(Word(k * GRID_S, (k + 1) * GRID_S - 0.05, " " + text))
            results.append(TranscribeResult(words=words, language="en"))
        return results

    def close(self) -> None:
        return None


# -- the server side (--serve): real app, stand-in backend, stage timers ----------------------------


class StageClock:
    """CPU seconds per stage, summed over threads (thread_time is per thread)."""

    def __init__(self) -> None:
        self.cpu_s: Dict[str, float] = defaultdict(float)
        self.audio_s = 0.0
        self.lags_ms: List[float] = []
        self.lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self.lock:
            self.cpu_s[stage] += seconds

    def wrap(self, owner, attr: str, stage: str) -> None:
        original = getattr(owner, attr)
        if asyncio.iscoroutinefunction(original):
            @functools.wraps(original)
            async def timed_async(*args, **kwargs):
                t = time.thread_time()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self.add(stage, time.thread_time() - t)
            setattr(owner, attr, timed_async)
        else:
            @functools.wraps(original)
            def timed(*args, **kwargs):
                t = time.thread_time()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.add(stage, time.thread_time() - t)
            setattr(owner, attr, timed)

    def snapshot(self, reset: bool) -> dict:
        with self.lock:
            lags = sorted(self.lags_ms)
            out = {"cpu_s": dict(self.cpu_s), "audio_s": self.audio_s, "loop_lag_n": len(lags),
                   "loop_lag_p50_ms": lags[len(lags) // 2] if lags else None,
                   "loop_lag_p95_ms": lags[int(len(lags) * 0.95)] if lags else None,
                   "loop_lag_max_ms": lags[-1] if lags else None}
            if reset:
                self.cpu_s.clear()
                self.audio_s = 0.0
                self.lags_ms.clear()
        return out


def instrument(clock: StageClock, ws_protocol: type) -> None:
    import starlette.websockets

    from whisperlivekit.asr.policies.local_agreement import LocalAgreementPolicy
    from whisperlivekit.audio import decode
    from whisperlivekit.audio.vad import VadStream
    from whisperlivekit.engine import TranscriptionEngine

    clock.wrap(ws_protocol, "data_received", "receive")
    clock.wrap(ws_protocol, "send", "send")
    original_pcm = decode.pcm16_to_float32

    def pcm(data: bytes):
        t = time.thread_time()
        out = original_pcm(data)
        clock.add("decode", time.thread_time() - t)
        with clock.lock:
            clock.audio_s += len(out) / 16000
        return out

    decode.pcm16_to_float32 = pcm
    from whisperlivekit.audio.vad import SileroVadModel

    if hasattr(SileroVadModel, "process_many"):  # the VAD lane runs many streams per call (VadStream.process too)
        clock.wrap(SileroVadModel, "process_many", "vad")
    else:  # before batched VAD: one stream per call
        clock.wrap(VadStream, "process", "vad")
    for method in ("append_audio", "drop_audio_before", "next_request", "apply", "finish"):
        clock.wrap(LocalAgreementPolicy, method, "policy")
    clock.wrap(TranscriptionEngine, "snapshot", "snapshot")
    clock.wrap(InstantStandInBackend, "transcribe_batch", "stand-in")

    class TimedJson:  # starlette's send_json calls json.dumps through its module's `json`
        loads = staticmethod(json.loads)

        @staticmethod
        def dumps(*args, **kwargs):
            t = time.thread_time()
            try:
                return json.dumps(*args, **kwargs)
            finally:
                clock.add("json", time.thread_time() - t)

    starlette.websockets.json = TimedJson


async def loop_lag_ticker(clock: StageClock, period_s: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(period_s)
        lag_ms = (loop.time() - t - period_s) * 1000
        with clock.lock:
            clock.lags_ms.append(max(0.0, lag_ms))


def serve(port: int, extra: Sequence[str]) -> None:
    import uvicorn

    from whisperlivekit.app import build_runtime, create_app
    from whisperlivekit.cli import settings_from_args, transport_frame_cap
    from whisperlivekit.http_guard import guarded_protocols

    settings = settings_from_args(["--port", str(port), "--pcm-input", "--device", "cpu", "--max-cpu-connections", "4000",
                                   "--log-level", "warning", *extra], environ={})
    manager, pool = build_runtime(settings, backend_factory=lambda device, lanes: InstantStandInBackend(device))
    app = create_app(settings, manager=manager, pool=pool)
    clock = StageClock()
    http_protocol, ws_protocol = guarded_protocols(settings)
    instrument(clock, ws_protocol)
    ticker: List[asyncio.Task] = []

    @app.get("/bench/stats")
    async def stats(reset: bool = False) -> dict:
        if not ticker:
            ticker.append(asyncio.create_task(loop_lag_ticker(clock)))
        return clock.snapshot(reset)

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, http=http_protocol, ws=ws_protocol,
                            ws_max_size=transport_frame_cap(settings.max_frame_bytes))
    uvicorn.Server(config).run()


# -- the driver: levels of real-time clients ---------------------------------------------------------


class StandInServer:
    """`bench_overhead.py --serve` in a subprocess, with conftest's ServerProcess interface."""

    def __init__(self, extra: Sequence[str]) -> None:
        from conftest import free_port, wait_healthy

        self.port = free_port()
        self.base_url, self.ws_url = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}/asr"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.log = open(f"/tmp/bench-overhead-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(self.port), *[f"--server-arg={a}" for a in extra]],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_healthy(self.base_url, timeout_s=180, proc=self.proc)

    def get(self, path: str):
        import httpx

        return httpx.get(self.base_url + path, timeout=10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_level(server: StandInServer, n: int, clips, duration_s: float) -> dict:
    import bench_streams
    import psutil

    proc = psutil.Process(server.proc.pid)
    server.get("/bench/stats?reset=true")
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    sessions = asyncio.run(bench_streams.run_level(server.ws_url, n, clips, duration_s, seed=n))
    cpu1, wall = sum(proc.cpu_times()[:2]), time.monotonic() - t0
    stats = server.get("/bench/stats?reset=true").json()
    audio_s = stats["audio_s"] or 1e-9
    cpu_s = cpu1 - cpu0
    per_stage = {stage: round(stats["cpu_s"].get(stage, 0.0) * 1000 / audio_s, 3) for stage in STAGES}
    per_stage["other"] = round(cpu_s * 1000 / audio_s - sum(per_stage.values()), 3)
    admitted = [s for s in sessions if s["admitted"]]
    lags = [x for s in admitted for x in s["commit_lags_s"]]
    return {
        "n": n, "wall_s": round(wall, 1), "audio_s": round(audio_s, 1), "server_cpu_s": round(cpu_s, 2),
        "server_cpu_pct": round(100 * cpu_s / wall, 1), "ms_per_stream_s": round(cpu_s * 1000 / audio_s, 3),
        "ms_per_stream_s_by_stage": per_stage, "admitted": len(admitted), "refused": len(sessions) - len(admitted),
        "loop_lag_p50_ms": stats["loop_lag_p50_ms"], "loop_lag_p95_ms": stats["loop_lag_p95_ms"],
        "loop_lag_max_ms": stats["loop_lag_max_ms"],
        "commit_lag_p50_s": bench_streams.pct(lags, 50), "commit_lag_p95_s": bench_streams.pct(lags, 95),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def table(rows: List[dict]) -> str:
    head = "| N | server CPU % | ms CPU per stream-s | " + " | ".join(STAGES + ("other",)) + " | loop lag p50/p95/max ms | commit lag p95 s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        stages = " | ".join(f"{r['ms_per_stream_s_by_stage'][s]:.3f}" for s in STAGES + ("other",))
        lines.append(f"| {r['n']} | {r['server_cpu_pct']} | {r['ms_per_stream_s']:.2f} | {stages} | "
                     f"{r['loop_lag_p50_ms']:.1f}/{r['loop_lag_p95_ms']:.1f}/{r['loop_lag_max_ms']:.1f} | {r['commit_lag_p95_s']} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeatable)")
    p.add_argument("--levels", default="8,16,32,64,128")
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--max-loop-lag-ms", type=float, default=100.0)
    p.add_argument("--out", type=Path, default=Path("bench-out/overhead"))
    args = p.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.server_arg)
        return 0
    import bench_streams

    clips = bench_streams.load_clips()
    server = StandInServer(args.server_arg)
    rows: List[dict] = []
    try:
        for n in (int(x) for x in args.levels.split(",")):
            time.sleep(1.0)
            row = run_level(server, n, clips, args.duration_s)
            rows.append(row)
            print(f"N={n}: {row['ms_per_stream_s']:.2f} ms CPU per stream-second, server CPU {row['server_cpu_pct']} %, "
                  f"loop lag p95 {row['loop_lag_p95_ms']:.1f} ms, commit lag p95 {row['commit_lag_p95_s']} s, "
                  f"load avg {row['load_avg_1m']}", flush=True)
            if row["loop_lag_p95_ms"] is not None and row["loop_lag_p95_ms"] > args.max_loop_lag_ms:
                break
    finally:
        server.stop()
    steady = [r for r in rows if r["loop_lag_p95_ms"] is not None and r["loop_lag_p95_ms"] <= args.max_loop_lag_ms]
    # the per-stream figure of the largest level the loop kept up with (past it, queued work is not yet paid for)
    best = max(steady, key=lambda r: r["n"]) if steady else None
    report = {"levels": rows, "largest_n_within_loop_lag": max((r["n"] for r in steady), default=None),
              "ms_per_stream_s_at_largest_steady_level": best["ms_per_stream_s"] if best else None,
              "streams_per_core_estimate": round(1000 / best["ms_per_stream_s"]) if best else None,
              "cpu_count": os.cpu_count(), "config": {k: str(v) for k, v in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(table(rows))
    print(f"largest N with loop-lag p95 <= {args.max_loop_lag_ms} ms: {report['largest_n_within_loop_lag']}; "
          f"streams per core of server work (1000 / ms per stream-second): {report['streams_per_core_estimate']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
