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
