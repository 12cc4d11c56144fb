"""10,000 garbage frames from 8 clients while a well-behaved client streams real speech."""

from __future__ import annotations

import asyncio
import os
import random

import pytest
import websockets

from conftest import run, running_server, wer
from helpers import eventually, ffmpeg_children
from whisperlivekit.client import stream

pytestmark = pytest.mark.slow

FRAMES = 10_000
CLIENTS = 8
# Garbage ends a connection with a code the server chose: 1000 (an empty frame is a clean end of
# audio), 1001 idle, 1003 text frame, 1007 undecodable audio, 1008 policy, 1009 oversized frame.
# Never 1006 (the server dropped the socket) or 1011 (it crashed on the input).
DELIBERATE_CLOSES = {1000, 1001, 1003, 1007, 1008, 1009}
# These say what was wrong in an `error` message before closing.
CLOSES_THAT_EXPLAIN = {1001, 1003, 1007, 1009}


def _garbage(rng: random.Random, webm: bytes):
    kind = rng.choice(("random", "truncated_webm", "text", "empty", "huge"))
    if kind == "random":
        return os.urandom(rng.randint(1, 4000))
    if kind == "truncated_webm":
        start = rng.randint(0, len(webm) - 1)
        return webm[start:start + rng.randint(1, 3000)]
    if kind == "text":
        return "garbage " * rng.randint(0, 20)
    if kind == "empty":
        return b""
    return b"\x00" * (1_048_576 + 1)


def test_garbage_frames_get_errors_while_a_real_stream_stays_accurate(speech_pcm, webm):
    pcm, reference = speech_pcm("harvard")
    encoded = webm(pcm)
    with running_server("--max-cpu-connections", "12", "--idle-timeout", "5") as server:
        sent = 0
        outcomes = []

        async def fuzzer(seed: int) -> None:
            nonlocal sent
            rng = random.Random(seed)
            while sent < FRAMES:
                async with websockets.connect(server.ws_url, max_size=None) as ws:
                    try:
                        while sent < FRAMES:
                            sent += 1
                            await ws.send(_garbage(rng, encoded))
                            if rng.random() < 0.05:
                                await asyncio.sleep(0)
                    except websockets.ConnectionClosed:
                        pass
                    heard_error = False
                    try:
                        async for raw in ws:
                            heard_error |= '"error"' in str(raw)
                    except websockets.ConnectionClosed:
                        pass
                    outcomes.append((heard_error, ws.close_code))

        async def scenario():
            good = asyncio.create_task(stream(server.ws_url, encoded, pcm=False, speed=1.0))
            await asyncio.gather(*(fuzzer(seed) for seed in range(CLIENTS)))
            return await good

        result = run(scenario())
        assert result.ended_with_ready_to_stop and wer(reference, result.text) <= 0.10, result.text
        assert outcomes and all(code in DELIBERATE_CLOSES for _, code in outcomes), sorted(set(outcomes))
        assert all(error for error, code in outcomes if code in CLOSES_THAT_EXPLAIN), sorted(set(outcomes))
        assert eventually(lambda: server.get("/health").json()["active_connections"] == 0, timeout=30)
        assert eventually(lambda: not ffmpeg_children(server.proc.pid), timeout=30)
