"""Issue 7 lifecycle: per-connection limits, SIGTERM draining, overload at 3x capacity."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest
import websockets

from conftest import run, running_server, wer, wer_of_prefix
from helpers import eventually, open_session, until
from whisperlivekit.client import stream


async def _closed(ws, timeout: float = 20.0):
    """(close code, reason, messages) once the server closes."""
    messages = []
    try:
        while True:
            messages.append(await asyncio.wait_for(ws.recv(), timeout))
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), (closed.rcvd.reason if closed.rcvd else ""), messages


# -- limits ------------------------------------------------------------------------------
def test_limits_close_with_clear_codes_and_reasons(speech_pcm):
    pcm, _ = speech_pcm("harvard")
    with running_server("--pcm-input", "--idle-timeout", "1", "--max-session-seconds", "3",
                        "--max-connections-per-ip", "2", "--max-backlog-seconds", "1") as server:
        async def idle():
            ws, first, _ = await open_session(server.ws_url)
            assert first["type"] == "config"
            return await _closed(ws)

        async def too_long():
            ws, first, _ = await open_session(server.ws_url)
            for offset in range(0, 32000 * 5, 3200):  # keeps sending at real time past the cap
                try:
                    await ws.send(pcm[offset:offset + 3200])
                except websockets.ConnectionClosed:
                    break
                await asyncio.sleep(0.1)
            return await _closed(ws)

        async def per_address():
            held = [await open_session(server.ws_url) for _ in range(2)]
            third, first, code = await open_session(server.ws_url)
            reason = third.close_reason
            for ws, *_ in held:
                await ws.close()
            return code, reason

        async def too_fast():
            ws, first, _ = await open_session(server.ws_url)
            for _ in range(6):  # ~65 s of audio at once
                try:
                    await ws.send(pcm)
                except websockets.ConnectionClosed:
                    break
            return await _closed(ws, timeout=60)

        code, reason, messages = run(idle())
        assert (code, reason) == (1001, "Idle timeout") and any("error" in m for m in messages)
        code, reason, _ = run(too_long())
        assert (code, reason) == (1008, "Maximum session length reached")
        assert run(per_address()) == (1008, "Too many connections from this address")
        code, reason, messages = run(too_fast())
        assert (code, reason) == (1008, "Client sends faster than real time"), messages[-2:]
        assert eventually(lambda: server.get("/health").json()["active_connections"] == 0)


# -- draining ----------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_drains_four_active_streams_then_exits_0(speech_pcm):
    pcm, reference = speech_pcm("harvard")
    with running_server("--pcm-input", "--drain-timeout", "90") as server:
        ready_codes = []
        stop_polling = threading.Event()

        def poll_ready():
            while not stop_polling.is_set():
                try:
                    ready_codes.append(httpx.get(server.base_url + "/ready", timeout=2).status_code)
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)

        def draining() -> bool:
            return server.get("/ready").json().get("reason") == "draining"

        async def scenario():
            admitted = []
            all_streaming = asyncio.Event()

            def on_message(message: dict) -> None:
                if message.get("type") == "config":
                    admitted.append(message)
                    if len(admitted) == 4:
                        all_streaming.set()

            clients = [asyncio.create_task(stream(server.ws_url, pcm, pcm=True, speed=1.0, on_message=on_message))
                       for _ in range(4)]
            await asyncio.wait_for(all_streaming.wait(), timeout=60)
            server.proc.send_signal(signal.SIGTERM)
            await until(draining)
            late, first, late_code = await open_session(server.ws_url)
            return await asyncio.gather(*clients), (first, late_code, late.close_reason)

        poller = threading.Thread(target=poll_ready, daemon=True)
        poller.start()
        results, (late_first, late_code, late_reason) = run(scenario())
        stop_polling.set()
        poller.join()
        assert server.proc.wait(timeout=60) == 0, server.log()[-3000:]
        log = server.log()
    assert late_first is None and (late_code, late_reason) == (1001, "Server is shutting down")
    assert 503 in ready_codes
    for result in results:
        assert result.ended_with_ready_to_stop and result.close_code == 1000, (result.close_code, result.close_reason)
        assert wer(reference, result.text) <= 0.2, result.text
    assert "Drained" in log


@pytest.mark.slow
def test_drain_deadline_finishes_remaining_streams_with_their_transcript(speech_pcm):
    pcm, reference = speech_pcm("harvard")
    with running_server("--pcm-input", "--drain-timeout", "3") as server:
        async def scenario():
            first_words = asyncio.Event()

            def on_message(message: dict) -> None:
                # a sentence under way (a first word can be committed at 0.8 s, and a stream cut 3 s later
                # ends on words heard in part: "Glue the shape to the", 1 error in 14 words)
                if len(" ".join(line.get("text", "") for line in message.get("lines", [])).split()) >= 3:
                    first_words.set()

            client = asyncio.create_task(stream(server.ws_url, pcm, pcm=True, speed=1.0, on_message=on_message))
            await asyncio.wait_for(first_words.wait(), timeout=60)  # mid-stream: three words are committed
            server.proc.send_signal(signal.SIGTERM)
            return await client

        result = run(scenario())
        assert server.proc.wait(timeout=60) == 0
    assert result.ended_with_ready_to_stop
    assert (result.close_code, result.close_reason) == (1001, "Server is shutting down")
    # The audio sent before the deadline, transcribed as well as the whole clip is elsewhere (10% WER).
    print("drain-deadline transcript:", repr(result.text))
    assert result.text and wer_of_prefix(reference, result.text) <= 0.10, result.text


# -- overload ----------------------------------------------------------------------------
@pytest.mark.slow
def test_three_times_capacity_refuses_the_excess_and_completes_the_rest(speech_pcm):
    pcm, _ = speech_pcm("arctic_a0009")
    with running_server("--pcm-input", "--max-cpu-connections", "2") as server:
        async def scenario():
            return await asyncio.gather(*(stream(server.ws_url, pcm, pcm=True, speed=1.0) for _ in range(6)))

        results = run(scenario())
        admitted = [r for r in results if r.config is not None]
        refused = [r for r in results if r.config is None]
        assert len(admitted) == 2 and len(refused) == 4
        assert all(r.close_code == 1008 for r in refused)
        assert all(r.ended_with_ready_to_stop and r.text for r in admitted)
        assert eventually(lambda: server.get("/health").json()["active_connections"] == 0)
