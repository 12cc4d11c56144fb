"""500 connect/stream/abort cycles from 32 clients on `/asr` (and 64 from 16 on `/v1/listen` and
`/v1/realtime`); afterwards nothing is held or leaked.

Engine builds fail on simulated GPU 1 (an injected engine factory: the hardware
double for a GPU that errors), so the retry-on-another-GPU path runs hundreds of times.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from typing import Optional

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
    async def factory(services, slot, language, **options):
        if slot.gpu_id == 1:
            failed_builds.append(slot.connection_id)
            raise DeviceError("CUDA error: out of memory (simulated failure on GPU 1)")
        return await build_engine(services, slot, language, **options)

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


VENDOR_CYCLES = int(os.environ.get("WLK_HAMMER_VENDOR_CYCLES", "64"))
VENDOR_CLIENTS = 16


def test_hammer_listen_and_realtime_cycles_leave_zero_slots_and_zero_ffmpeg(speech_pcm):
    """Deepgram and OpenAI Realtime clients that stream, drop, send garbage or oversized frames, at
    48 / 24 kHz (resampled by ffmpeg) and 16 kHz; the same failing simulated GPU 1."""
    settings = Settings(simulate_gpus=4, max_connections_per_gpu=6, unhealthy_backoff_s=0.2, no_audio_timeout_s=60)
    failed_builds_on_gpu_1: list = []
    app = create_app(settings, engine_factory=engine_factory_failing_on_simulated_gpu_1(failed_builds_on_gpu_1))
    services = app.state.services
    pcm, _ = speech_pcm("arctic_a0007")
    outcomes: dict = {}
    rng = random.Random(4321)

    def count(key: str) -> None:
        outcomes[key] = outcomes.get(key, 0) + 1

    with in_process_server(app) as base:
        ws_base = base.replace("http", "ws")

        async def listen(action: str) -> None:
            async with websockets.connect(f"{ws_base}/v1/listen?encoding=linear16&sample_rate=48000", max_size=None,
                                          open_timeout=30) as ws:
                frame = b"\1\0" * 4800  # 100 ms at 48 kHz
                for _ in range(rng.randint(1, 10)):
                    await ws.send(frame)
                    await asyncio.sleep(0.01)
                if action == "drop":
                    drop_tcp(ws)
                    return
                await ws.send({"finish": '{"type": "CloseStream"}', "text": "not json",
                               "huge": b"\1" * (settings.max_frame_bytes + 1)}[action])
                async for _ in ws:
                    pass

        async def realtime(action: str) -> Optional[str]:
            async with websockets.connect(f"{ws_base}/v1/realtime?intent=transcription", max_size=None,
                                          open_timeout=30) as ws:
                if '"session.created"' not in await asyncio.wait_for(ws.recv(), 30):
                    return "refused"  # an error event: every slot was taken
                rate_hz = rng.choice((16_000, 24_000))
                await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": rate_hz}}}}}))
                for k in range(rng.randint(1, 10)):
                    chunk = pcm[k * 3200:(k + 1) * 3200]
                    await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}))
                    await asyncio.sleep(0.01)
                if action == "drop":
                    drop_tcp(ws)
                    return
                if action == "huge":
                    await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                              "audio": base64.b64encode(b"\1" * (settings.max_frame_bytes + 2)).decode()}))
                    async for _ in ws:
                        pass
                    return
                await ws.send({"finish": '{"type": "input_audio_buffer.commit"}', "text": "not json"}[action])
                async for raw in ws:
                    if "transcription.completed" in raw or '"error"' in raw:
                        break

        async def cycle() -> None:
            protocol = rng.choice(("listen", "realtime"))
            action = rng.choice(("drop", "drop", "finish", "text", "huge"))
            try:
                refused = await (listen if protocol == "listen" else realtime)(action)
                count(f"{protocol}-{refused or action}")
            except websockets.ConnectionClosed as closed:
                count(f"{protocol}-closed-{closed.rcvd.code if closed.rcvd else 'abnormal'}")
            except websockets.InvalidStatus as refused:
                count(f"{protocol}-http-{refused.response.status_code}")
            except (OSError, asyncio.TimeoutError) as exc:
                count(type(exc).__name__)

        async def client(n: int) -> None:
            for _ in range(n, VENDOR_CYCLES, VENDOR_CLIENTS):
                await cycle()

        async def scenario():
            await asyncio.gather(*(client(n) for n in range(VENDOR_CLIENTS)))

        run(scenario())
        print("outcomes:", dict(sorted(outcomes.items())))
        assert sum(outcomes.values()) == VENDOR_CYCLES
        assert eventually(lambda: services.manager.held() == 0, timeout=30), services.manager.snapshot()
        assert eventually(lambda: not services.active_engines, timeout=30)
        assert eventually(lambda: not ffmpeg_children(), timeout=30), [p.pid for p in ffmpeg_children()]
        assert len(failed_builds_on_gpu_1) > 1, failed_builds_on_gpu_1
        assert not any(key.endswith("closed-1011") for key in outcomes), outcomes
        assert outcomes.get("listen-finish", 0) > 0 and outcomes.get("realtime-finish", 0) > 0

        async def still_serves() -> str:
            async with websockets.connect(f"{ws_base}/v1/realtime?intent=transcription") as ws:
                return await ws.recv()

        assert '"session.created"' in run(still_serves())
