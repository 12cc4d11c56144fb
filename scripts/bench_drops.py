"""Abrupt-drop hammer against a real server: does it survive, and does it leak?

Each cycle: connect to `/asr`, read `config`, send 1..N chunks of 2,000 bytes of a
real recording (WebM/Opus, or raw PCM with `--mode pcm`) 10 ms apart, then abort
the TCP connection (no close frame), as a crashed browser tab would. Several
clients run in parallel. The server runs as a user runs it
(`python -m whisperlivekit.cli`) with `PYTHONFAULTHANDLER=1`, so a native crash
leaves its thread stacks in the log.

Reported (JSON on stdout, plus a summary on stderr): cycles done, whether and when
the server died (with the log's tail), RSS per cycle after warm-up (least-squares
slope), and once the clients are gone: slots held, sessions active, ffmpeg
children, open descriptors and sockets.

    python3 scripts/bench_drops.py --cycles 2000 --parallel 8 --mode webm
    python3 scripts/bench_drops.py --cycles 2000 --parallel 8 --mode pcm

All traffic goes to 127.0.0.1; the loop is bounded by `--cycles` and `--max-minutes`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import httpx
import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

CHUNK_BYTES = 2_000
CHUNK_GAP_S = 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payload(mode: str) -> bytes:
    import audio_assets
    from whisperlivekit.client import encode_webm_opus, load_pcm16

    path, _ = audio_assets.harvard()
    pcm = load_pcm16(path)
    return pcm if mode == "pcm" else encode_webm_opus(pcm)


def start_server(mode: str, extra: List[str], log_path: Path) -> Tuple[subprocess.Popen, str]:
    port = _free_port()
    flags = ["--host", "127.0.0.1", "--port", str(port), *(["--pcm-input"] if mode == "pcm" else []), *extra]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "whisperlivekit.cli", *flags], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=os.getcwd())
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become healthy")


async def one_cycle(url: str, payload: bytes, rng: random.Random, max_chunks: int) -> str:
    """One connect / send / abort; returns an outcome label."""
    try:
        ws = await websockets.connect(url, max_size=None, open_timeout=30)
    except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as exc:
        return f"connect-{type(exc).__name__}"
    try:
        first = await asyncio.wait_for(ws.recv(), 30)
        if '"config"' not in first:
            return "no-config"
        n = rng.randint(1, max_chunks)
        start = rng.randrange(0, max(1, len(payload) // CHUNK_BYTES - n)) * CHUNK_BYTES if rng.random() < 0.2 else 0
        for k in range(n):
            chunk = payload[start + k * CHUNK_BYTES: start + (k + 1) * CHUNK_BYTES]
            if not chunk:
                break
            await ws.send(chunk)
            await asyncio.sleep(CHUNK_GAP_S)
        return "dropped"
    except websockets.ConnectionClosed as closed:
        return f"closed-{closed.rcvd.code if closed.rcvd else 'abnormal'}"
    except (OSError, asyncio.TimeoutError) as exc:
        return type(exc).__name__
    finally:
        ws.transport.abort()  # vanish: no close frame


def _open_counts(pid: int) -> dict:
    proc = psutil.Process(pid)
    try:
        sockets = proc.net_connections(kind="inet")
    except AttributeError:  # psutil < 6
        sockets = proc.connections(kind="inet")
    return {
        "fds": proc.num_fds(),
        "sockets": len(sockets),
        "sockets_by_status": {s: sum(1 for c in sockets if c.status == s) for s in sorted({c.status for c in sockets})},
        "threads": proc.num_threads(),
        "ffmpeg_children": sum(1 for c in proc.children(recursive=True) if c.name() == "ffmpeg"),
    }


def _slope_kb_per_cycle(samples: List[Tuple[int, float]]) -> Optional[float]:
    if len(samples) < 3:
        return None
    xs = [float(c) for c, _ in samples]
    ys = [r for _, r in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den / 1024


async def hammer(args, proc: subprocess.Popen, base: str, payload: bytes) -> dict:
    url = base.replace("http", "ws") + "/asr"
    outcomes: dict = {}
    done = 0
    rss: List[Tuple[int, float]] = []
    deadline = time.monotonic() + args.max_minutes * 60
    crashed_at: Optional[int] = None
    ps = psutil.Process(proc.pid)
    baseline = _open_counts(proc.pid)
    next_sample = 0

    async def client(n: int) -> None:
        nonlocal done, crashed_at, next_sample
        rng = random.Random(args.seed * 1000 + n)
        while done < args.cycles and time.monotonic() < deadline and crashed_at is None:
            done += 1
            outcome = await one_cycle(url, payload, rng, args.max_chunks)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if proc.poll() is not None:
                crashed_at = crashed_at or done
                return
            if done >= next_sample:
                next_sample = done + args.sample_every
                try:
                    rss.append((done, float(ps.memory_info().rss)))
                except psutil.NoSuchProcess:
                    pass
                if args.progress:
                    print(f"cycle {done}: rss {rss[-1][1] / 2**20:.1f} MB, {outcomes}", file=sys.stderr, flush=True)

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(args.parallel)))
    elapsed = time.monotonic() - started
    result: dict = {
        "mode": args.mode, "parallel": args.parallel, "max_chunks": args.max_chunks, "cycles": done,
        "elapsed_s": round(elapsed, 1), "outcomes": dict(sorted(outcomes.items())),
        "crashed": proc.poll() is not None, "crashed_at_cycle": crashed_at, "exit_code": proc.poll(),
        "baseline": baseline,
    }
    if result["crashed"]:
        return result
    after_warmup = [(c, r) for c, r in rss if c >= args.warmup]
    slope = _slope_kb_per_cycle(after_warmup)
    result["rss_mb_first_last"] = [round(rss[0][1] / 2**20, 1), round(rss[-1][1] / 2**20, 1)] if rss else None
    result["rss_kb_per_cycle_after_warmup"] = None if slope is None else round(slope, 2)
    # RSS rises while allocator arenas and caches fill, then levels off: the second half shows a leak, if any.
    last_half = _slope_kb_per_cycle(rss[len(rss) // 2:])
    result["rss_kb_per_cycle_last_half"] = None if last_half is None else round(last_half, 2)
    result["rss_samples"] = [(c, round(r / 2**20, 2)) for c, r in rss]
    # Give the server time to notice the last drops, then look at what it still holds.
    settle_deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < settle_deadline:
            health = (await http.get(base + "/health")).json()
            if health.get("active_connections") == 0 and _open_counts(proc.pid)["ffmpeg_children"] == 0:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)
        health = (await http.get(base + "/health")).json()
    result["slots_held_after"] = health.get("active_connections")
    result["after"] = _open_counts(proc.pid)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--mode", choices=("webm", "pcm"), default="webm")
    parser.add_argument("--max-chunks", type=int, default=20, help="each cycle sends 1..N chunks of 2,000 bytes")
    parser.add_argument("--warmup", type=int, default=200, help="cycles excluded from the RSS slope")
    parser.add_argument("--sample-every", type=int, default=25)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--log", type=Path, default=None, help="server log path (default: a temp file)")
    parser.add_argument("server_flags", nargs=argparse.REMAINDER, help="after --: extra flags for the server")
    args = parser.parse_args()
    extra = [f for f in args.server_flags if f != "--"]
    log_path = args.log or Path(tempfile.mkstemp(prefix="bench-drops-", suffix=".log")[1])
    payload = _payload(args.mode)
    proc, base = start_server(args.mode, extra, log_path)
    try:
        result = asyncio.run(hammer(args, proc, base, payload))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
    result["server_log"] = str(log_path)
    if result["crashed"]:
        result["log_tail"] = log_path.read_text(errors="replace")[-6000:]
    printable = {k: v for k, v in result.items() if k not in ("rss_samples", "log_tail")}
    print(json.dumps(result, indent=1))
    print("SUMMARY " + json.dumps(printable), file=sys.stderr)
    return 1 if result["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())
