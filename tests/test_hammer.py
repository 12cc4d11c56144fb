"""500 connect/stream/abort cycles from 32 clients; afterwards nothing is held or leaked.

Engine builds fail on simulated GPU 1 (an injected engine factory: the hardware
double for a GPU that errors), so the retry-on-another-GPU path runs hundreds of times.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest
import websockets

from conftest import in_process_server, run
from helpers import drop_tcp, eventually, ffmpeg_children
from whisperlivekit.app import create_app
from whisperlivekit.config import Settings
from whisperlivekit.errors import DeviceError
from whisperlivekit.services import build_engine

pytestmark = pytest.mark.slow

CYCLES = int(__import__("os").environ.get("WLK_HAMMER_CYCLES", "500"))
CLIENTS = 32


def engine_factory_failing_on_simulated_gpu_1(failed_builds: list):
    """An engine factory whose builds on GPU 1 raise; each refused connection id is appended to `failed_builds`."""
    async def factory(services, slot, language):
        if slot.gpu_id == 1:
            failed_builds.append(slot.connection_id)
            raise DeviceError("CUDA error: out of memory (simulated failure on GPU 1)")
        return await build_engine(services, slot, language)

    return factory


def test_hammer_500_cycles_32_clients_leave_zero_slots_and_zero_ffmpeg(speech_pcm, webm):
    settings = Settings(simulate_gpus=4, max_connections_per_gpu=6, unhealthy_backoff_s=0.2, no_audio_timeout_s=60)
    failed_builds_on_gpu_1: list = []
    app = create_app(settings, engine_factory=engine_factory_failing_on_simulated_gpu_1(failed_builds_on_gpu_1))
    services = app.state.services
    pcm, _ = speech_pcm("harvard")
    payload = webm(pcm)
    outcomes: dict = {}
    durations: dict = {}
    rng = random.Random(1234)

    with in_process_server(app) as base:
        url = base.replace("http", "ws") + "/asr"

        async def cycle(i: int) -> None:
            action = rng.choice(["drop", "drop", "finish", "text", "garbage", "huge", "close", "drop-early"])
            started = time.monotonic()
            try:
                await _cycle(action)
            finally:
                durations.setdefault(action, []).append(time.monotonic() - started)

        async def _cycle(action: str) -> None:
            try:
                async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
                    first = await asyncio.wait_for(ws.recv(), 30)
                    if '"config"' not in first:
                        outcomes["refused-before-config"] = outcomes.get("refused-before-config", 0) + 1
                        return
                    if action == "drop-early":
                        drop_tcp(ws)
                    elif action == "drop":
                        n = rng.randint(1, 20)
                        for k in range(n):
                            await ws.send(payload[k * 1500 : (k + 1) * 1500])
                            await asyncio.sleep(0.01)
                        drop_tcp(ws)
                    elif action == "finish":
                        await ws.send(payload[: rng.randint(2000, 12000)])
                        await ws.send(b"")
                        async for message in ws:
                            if "ready_to_stop" in message:
                                break
                    elif action == "text":
                        await ws.send("not audio")
                        await ws.recv()
                    elif action == "garbage":
                        await ws.send(os.urandom(rng.randint(10, 9000)))
                        await ws.send(b"")
                        async for _ in ws:
                            pass
                    elif action == "huge":
                        await ws.send(b"\1" * (settings.max_frame_bytes + 1))
                        async for _ in ws:
                            pass
                    outcomes[action] = outcomes.get(action, 0) + 1
            except websockets.ConnectionClosed as closed:
                key = f"closed-{closed.rcvd.code if closed.rcvd else 'abnormal'}"
                outcomes[key] = outcomes.get(key, 0) + 1
            except (OSError, asyncio.TimeoutError) as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1

        async def client(n: int) -> None:
            for i in range(n, CYCLES, CLIENTS):
                await cycle(i)

        async def scenario():
            await asyncio.gather(*(client(n) for n in range(CLIENTS)))

        run(scenario())
        print("outcomes:", dict(sorted(outcomes.items())))
        print("max seconds per action:", {k: round(max(v), 1) for k, v in sorted(durations.items())})
        assert sum(outcomes.values()) == CYCLES
        assert eventually(lambda: services.manager.held() == 0, timeout=30), services.manager.snapshot()
        assert eventually(lambda: not services.active_engines, timeout=30)
        assert eventually(lambda: not ffmpeg_children(), timeout=30), [p.pid for p in ffmpeg_children()]
        snapshot = services.manager.snapshot()
        assert all(g["active_connections"] == 0 for g in snapshot["gpus"])
        # GPU 1 was re-probed after each 0.2 s back-off and failed again, many times; no such
        # connection was lost: each was retried on another GPU (a lost one would close with 1011).
        assert len(failed_builds_on_gpu_1) > 1, failed_builds_on_gpu_1
        assert "closed-1011" not in outcomes, outcomes
        assert outcomes.get("finish", 0) > 0 and outcomes.get("drop", 0) > 0
