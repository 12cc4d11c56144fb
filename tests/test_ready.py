"""`/ready` answers 503 exactly when a new `/asr` connection would be refused, and 200 exactly when admitted.

Bug 1: `/ready` checked the CPU's slot count but not the real-time-load cap that admission
applies, so a load balancer kept sending streams to a host that refused every one of them.
Here a real server with a very low `--max-realtime-load` is saturated by one real stream.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from conftest import running_server, run
from helpers import close_code_after, open_session

CLOSE_POLICY = 1008


async def _ready(base_url: str) -> int:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        return (await client.get("/ready")).status_code


async def _admitted(ws_url: str) -> bool:
    """Try a new connection: True if it got its config (admitted), False if closed with 1008."""
    ws, first, code = await open_session(ws_url, timeout=30)
    try:
        if first is not None and first.get("type") == "config":
            return True
        assert code == CLOSE_POLICY or await close_code_after(ws) == CLOSE_POLICY, (first, code)
        return False
    finally:
        await ws.close()


async def _until_ready_is(base_url: str, status: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await _ready(base_url) == status:
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.mark.slow
def test_ready_is_503_exactly_while_the_saturated_cpu_refuses_connections_and_200_when_it_admits(speech_pcm):
    pcm, _ = speech_pcm("harvard")
    # 0.001 of two lanes over the 10 s window: 20 ms of compute saturates the CPU for admission
    with running_server("--pcm-input", "--max-realtime-load", "0.001") as server:
        async def scenario() -> None:
            # idle: ready, and a connection is admitted
            assert await _ready(server.base_url) == 200
            assert await _admitted(server.ws_url) is True

            # one real stream pushes the CPU over its load cap: not ready, and a newcomer is refused
            stream, config, _ = await open_session(server.ws_url)
            assert config["type"] == "config"
            await stream.send(pcm[: 2 * 16000 * 8])
            assert await _until_ready_is(server.base_url, 503, 60), "the CPU never counted as saturated"
            assert await _admitted(server.ws_url) is False
            assert await _ready(server.base_url) == 503
            await stream.send(b"")
            await close_code_after(stream, timeout=60)

            # the load window empties: ready again, and a connection is admitted again
            assert await _until_ready_is(server.base_url, 200, 60), "the load never fell back under the cap"
            assert await _admitted(server.ws_url) is True

        run(scenario())


class SlowStandInBackend:
    """The real tiny.en backend with each step held to at least `step_s` of wall time: a stand-in for a
    device near saturation (this CPU runs tiny.en much faster than real time, so real streams would
    need dozens of clients to fill it). The load meter counts a step's wall time, as on a real device."""

    def __init__(self, inner, step_s: float) -> None:
        self.inner, self.step_s = inner, step_s
        self.name, self.device, self.model_label = inner.name, inner.device, inner.model_label

    def transcribe_batch(self, requests):
        started = time.monotonic()
        results = self.inner.transcribe_batch(requests)
        time.sleep(max(0.0, self.step_s - (time.monotonic() - started)))
        return results

    def __getattr__(self, name: str):  # everything else is the real backend's
        return getattr(self.inner, name)


async def _stream_in_real_time(ws, pcm: bytes, stop: asyncio.Event, chunk_s: float = 0.25) -> None:
    step = int(2 * 16000 * chunk_s)
    offset = 0
    while not stop.is_set():
        await ws.send(pcm[offset: offset + step])
        offset = (offset + step) % (len(pcm) - step)
        await asyncio.sleep(chunk_s)


def test_admission_by_measured_load_is_on_by_default_and_refuses_before_any_connection_cap(speech_pcm):
    """Default settings: streams that keep every lane busy make the CPU refuse newcomers (1008) and
    `/ready` answer 503 while far below the CPU's connection cap; once they stop, it admits again."""
    from conftest import in_process_server
    from whisperlivekit.app import create_app
    from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
    from whisperlivekit.config import Settings
    from whisperlivekit.runtime.model_pool import lanes_for
    from whisperlivekit.weights.resolve import resolve_model

    settings = Settings(pcm_input=True)
    assert settings.max_realtime_load > 0, "admission by measured load should be on by default"
    lanes = lanes_for("cpu")
    assert lanes < settings.max_cpu_connections  # so a refusal here can only come from the load
    pcm, _ = speech_pcm("harvard")
    app = create_app(settings, backend_factory=lambda device, n: SlowStandInBackend(
        FasterWhisperBackend(resolve_model("tiny.en"), device="cpu", cpu_threads=1, lanes=n), step_s=1.5))
    with in_process_server(app) as base:
        ws_url = base.replace("http", "ws") + "/asr"

        async def scenario() -> None:
            assert await _ready(base) == 200
            stop = asyncio.Event()
            streams = [await open_session(ws_url) for _ in range(lanes)]
            assert all(first["type"] == "config" for _, first, _ in streams)
            feeding = [asyncio.create_task(_stream_in_real_time(ws, pcm, stop)) for ws, _, _ in streams]
            try:
                assert await _until_ready_is(base, 503, 45), "the busy CPU never counted as saturated"
                assert await _admitted(ws_url) is False
                async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                    cpu = (await client.get("/gpu-status")).json()["cpu"]
                assert cpu["active_connections"] == lanes < cpu["max_connections"]
            finally:
                stop.set()
                await asyncio.gather(*feeding)
            for ws, _, _ in streams:
                await ws.send(b"")
                await close_code_after(ws, timeout=60)
            assert await _until_ready_is(base, 200, 60), "the load never fell back under the cap"
            assert await _admitted(ws_url) is True

        run(scenario())
