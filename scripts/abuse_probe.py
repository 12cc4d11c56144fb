"""Measure issue 12's abuse cases (items 2-5) against a server run from a given source tree.

    python3 scripts/abuse_probe.py --tree /work/main   # before
    python3 scripts/abuse_probe.py --tree .            # after

Prints one line per probe. Traffic goes to 127.0.0.1 only; every probe is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import free_port, wait_healthy  # noqa: E402

TOKEN = "probe-token"


def start(tree: str, *flags: str, nofile: int = 0, env: dict = None):
    port = free_port()

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = open(f"/tmp/abuse-probe-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "whisperlivekit.cli", "--port", str(port), *flags], cwd=tree,
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit, env={**os.environ, **(env or {})})
    wait_healthy(f"http://127.0.0.1:{port}", proc=proc)
    return proc, port


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _hog(url: str, trickle: bool) -> None:
    try:
        async with websockets.connect(url) as ws:
            await ws.recv()
            for _ in range(40):
                if trickle:
                    await ws.send(b"\x1a\x45")
                try:
                    await asyncio.wait_for(ws.recv(), 5.0)
                except asyncio.TimeoutError:
                    pass
    except websockets.ConnectionClosed:
        pass


def probe_hogs(tree: str, limit_s: float) -> str:
    """8 clients take the CPU's 8 slots (4 send nothing, 4 send 2 bytes every 5 s); when does a 9th get in?"""
    proc, port = start(tree)
    url = f"ws://127.0.0.1:{port}/asr"

    async def go() -> str:
        hogs = [asyncio.create_task(_hog(url, i % 2 == 1)) for i in range(8)]
        while httpx.get(f"http://127.0.0.1:{port}/health").json()["active_connections"] < 8:
            await asyncio.sleep(0.1)
        held = time.monotonic()
        while time.monotonic() - held < limit_s:
            async with websockets.connect(url) as ws:
                try:
                    first = await asyncio.wait_for(ws.recv(), 10)
                    if '"config"' in first:
                        return f"9th client admitted {time.monotonic() - held:.1f} s after 8 idle/trickling clients took every slot"
                except websockets.ConnectionClosed:
                    pass
            await asyncio.sleep(0.5)
        for hog in hogs:
            hog.cancel()
        return f"9th client still refused after {limit_s:.0f} s"

    try:
        return asyncio.run(go())
    finally:
        stop(proc)


def probe_slowloris(tree: str, sockets: int, nofile: int, *flags: str) -> str:
    """`sockets` connections with half-sent headers against a server limited to `nofile` descriptors."""
    proc, port = start(tree, *flags, nofile=nofile)
    slow, failures, latencies = [], 0, []
    try:
        for i in range(sockets):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(sock)
            except OSError:
                pass
            if i % 100 == 99:
                started = time.monotonic()
                try:
                    ok = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
                except httpx.HTTPError:
                    ok = False
                failures += not ok
                latencies.append(time.monotonic() - started)
        open_after = 0
        time.sleep(8)
        for sock in slow:
            sock.settimeout(0.01)
            try:
                sock.recv(1)  # b"" or the start of a 408: closed by the server
            except socket.timeout:
                open_after += 1
            except OSError:
                pass
        return (f"{sockets} slow sockets, nofile {nofile}: /health failed {failures} of {len(latencies)} probes, "
                f"max latency {max(latencies) * 1000:.0f} ms; still open 8 s later: {open_after}")
    finally:
        for sock in slow:
            sock.close()
        stop(proc)


def probe_ping_flood(tree: str, pings: int, *flags: str) -> str:
    """A client sends `pings` pings and never reads: the server's RSS growth, and whether it drops the client."""
    proc, port = start(tree, "--pcm-input", *flags)
    server = psutil.Process(proc.pid)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /asr HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        time.sleep(1)
        before = server.memory_info().rss
        batch = (b"\x89\x80" + os.urandom(4)) * 10_000
        sent, dropped, peak = 0, False, before
        started = time.monotonic()
        sock.settimeout(5)
        while sent < pings and time.monotonic() - started < 120:
            try:
                sock.sendall(batch)
                sent += 10_000
            except socket.timeout:
                continue
            except OSError:
                dropped = True
                break
            peak = max(peak, server.memory_info().rss)
        time.sleep(1)
        peak = max(peak, server.memory_info().rss)
        sock.close()
        return (f"ping flood: {sent / 1e6:.2f} M pings in {time.monotonic() - started:.0f} s, server RSS +{(peak - before) / 1e6:.1f} MB, "
                + ("dropped by the server" if dropped else "never dropped"))
    finally:
        stop(proc)


def probe_auth(tree: str, seconds: float) -> str:
    """Wrong tokens on /metrics (under --protect-status) as fast as one client can send them."""
    proc, port = start(tree, "--protect-status", env={"WLK_API_TOKEN": TOKEN})
    try:
        counts = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            started = time.monotonic()
            i = 0
            while time.monotonic() - started < seconds:
                status = client.get(f"/metrics?token=guess{i}").status_code
                counts[status] = counts.get(status, 0) + 1
                i += 1
        checked = counts.get(401, 0)
        return f"wrong tokens over HTTP for {seconds:.0f} s: {checked / seconds:.1f} compared per second; statuses {counts}"
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", default=".", help="source tree the server runs from")
    parser.add_argument("--only", nargs="*", default=["hogs", "slowloris", "pings", "auth"])
    parser.add_argument("--hog-limit", type=float, default=75.0)
    parser.add_argument("--slow-sockets", type=int, default=1500)
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--pings", type=int, default=1_000_000)
    args = parser.parse_args()
    tree = str(Path(args.tree).resolve())
    if "hogs" in args.only:
        print(probe_hogs(tree, args.hog_limit), flush=True)
    if "slowloris" in args.only:
        print(probe_slowloris(tree, args.slow_sockets, args.nofile), flush=True)
    if "pings" in args.only:
        print(probe_ping_flood(tree, args.pings), flush=True)
    if "auth" in args.only:
        print(probe_auth(tree, 5.0), flush=True)


if __name__ == "__main__":
    main()
