"""Graceful shutdown (`lifecycle.py`) in-process: a real uvicorn `DrainingServer` on a free port,
sessions registered by hand instead of WebSocket streams, and the signal delivered by calling
`handle_exit` (what uvicorn's signal handler calls)."""

from __future__ import annotations

import asyncio
import signal
from types import SimpleNamespace

import uvicorn

from conftest import free_port
from whisperlivekit.lifecycle import DrainingServer, Sessions, drain

GUARD_S = 30.0  # only a bound for a hung test, never a measured time


async def empty_app(scope, receive, send) -> None:  # an ASGI app that is never called here
    raise AssertionError("no request expected")


def fake_services() -> SimpleNamespace:
    return SimpleNamespace(draining=False, sessions=Sessions())


async def a_stream(sessions: Sessions, connection_id: str, ends: asyncio.Event) -> bool:
    """Stands in for one /asr stream: ends by itself (`ends`) or when told to finish; True if told."""
    finish = sessions.register(connection_id)
    waits = [asyncio.ensure_future(ends.wait()), asyncio.ensure_future(finish.wait())]
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    sessions.unregister(connection_id)
    return finish.is_set()


async def started_server(services, drain_timeout_s: float):
    config = uvicorn.Config(empty_app, host="127.0.0.1", port=free_port(), lifespan="off", log_config=None)
    server = DrainingServer(config, services, drain_timeout_s)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, serving


def test_drain_with_no_streams_returns_at_once_and_stops_admitting():
    services = fake_services()
    asyncio.run(asyncio.wait_for(drain(services, timeout_s=GUARD_S), GUARD_S))
    assert services.draining is True


def test_first_sigterm_stops_admitting_and_waits_for_streams_that_end_by_themselves():
    async def scenario():
        services = fake_services()
        server, serving = await started_server(services, drain_timeout_s=GUARD_S)
        ends = asyncio.Event()
        stream = asyncio.create_task(a_stream(services.sessions, "c1", ends))
        await asyncio.sleep(0)
        server.handle_exit(signal.SIGTERM, None)
        assert services.draining is True  # /ready answers 503 from now on
        for _ in range(20):  # the server keeps serving while the stream is active
            await asyncio.sleep(0.01)
        assert not serving.done() and not server.should_exit
        ends.set()  # the client sends its end frame and gets its transcript
        told_to_finish = await asyncio.wait_for(stream, GUARD_S)
        await asyncio.wait_for(serving, GUARD_S)
        return told_to_finish

    assert asyncio.run(scenario()) is False


def test_at_the_drain_deadline_remaining_streams_are_told_to_finish():
    async def scenario():
        services = fake_services()
        server, serving = await started_server(services, drain_timeout_s=0.2)
        never = asyncio.Event()
        streams = [asyncio.create_task(a_stream(services.sessions, f"c{i}", never)) for i in range(3)]
        await asyncio.sleep(0)
        server.handle_exit(signal.SIGTERM, None)
        told = await asyncio.wait_for(asyncio.gather(*streams), GUARD_S)
        await asyncio.wait_for(serving, GUARD_S)
        return told, len(services.sessions)

    assert asyncio.run(scenario()) == ([True, True, True], 0)


def test_a_second_signal_finishes_every_stream_now():
    async def scenario():
        services = fake_services()
        server, serving = await started_server(services, drain_timeout_s=3600)
        stream = asyncio.create_task(a_stream(services.sessions, "c1", asyncio.Event()))
        await asyncio.sleep(0)
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.sleep(0.05)
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit
        told = await asyncio.wait_for(stream, GUARD_S)
        await asyncio.wait_for(serving, GUARD_S)
        return told

    assert asyncio.run(scenario()) is True
