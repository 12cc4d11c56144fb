"""Small client-side helpers shared by the server tests."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import List, Optional

import psutil
import websockets


async def open_session(url: str, timeout: float = 30.0, headers: Optional[dict] = None):
    """Connect and read the first message; returns (websocket, first message or None, close code)."""
    ws = await websockets.connect(url, max_size=None, open_timeout=timeout, additional_headers=headers)
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        return ws, first, None
    except websockets.ConnectionClosed as closed:
        return ws, None, closed.rcvd.code if closed.rcvd else None


def drop_tcp(ws) -> None:
    """Vanish like a crashed client: no close frame, the TCP connection is just aborted."""
    ws.transport.abort()


async def close_code_after(ws, timeout: float = 10.0) -> Optional[int]:
    """Read until the server closes; returns its close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except asyncio.TimeoutError:
        return None


async def messages_until_close(ws, timeout: float = 30.0) -> List[dict]:
    out = []
    try:
        while True:
            out.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except (websockets.ConnectionClosed, asyncio.TimeoutError):
        return out


def ffmpeg_children(pid: Optional[int] = None) -> List[psutil.Process]:
    """ffmpeg processes below `pid` (a server subprocess; default: this test process, for in-process servers)."""
    try:
        return [p for p in psutil.Process(pid or os.getpid()).children(recursive=True) if p.name() == "ffmpeg"]
    except psutil.NoSuchProcess:
        return []


def eventually(check, timeout: float = 15.0, interval: float = 0.2):
    """Poll `check()` until truthy (servers release asynchronously); returns the last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    return value


async def until(check, timeout_s: float = 30.0, interval_s: float = 0.1) -> None:
    """Inside a scenario: wait until the blocking `check()` (run in a thread) is truthy, else fail."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {check}")
        await asyncio.sleep(interval_s)


def check_finished_stream(result, reference: str, max_wer: float) -> float:
    """A clean finish (config first, ready_to_stop last, close 1000) and WER within `max_wer`; returns the WER."""
    from conftest import wer

    assert result.config is not None and result.config["type"] == "config"
    assert result.ended_with_ready_to_stop, f"no ready_to_stop; closed {result.close_code} {result.close_reason}"
    assert result.messages[-1] == {"type": "ready_to_stop"}, "ready_to_stop must be the last message"
    assert result.close_code == 1000
    error_rate = wer(reference, result.text)
    assert error_rate <= max_wer, f"WER {error_rate:.1%} > {max_wer:.0%}: {result.text!r}"
    return error_rate
