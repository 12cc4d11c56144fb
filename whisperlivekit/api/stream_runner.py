"""One admitted WebSocket stream, run to its end: the loop every streaming adapter shares.

`/asr`, `/v1/listen` and `/v1/realtime` differ only in their wire format, so each gives the
runner its protocol-specific parts (`StreamParts`: read the client's frames into the engine,
translate the engine's output to messages, say goodbye) and the runner does the rest the same
way for all of them: the session limits' watchdog, the drain on SIGTERM (finish transcribing,
then close 1001), which task's failure ends the stream, and cancelling everything on the way out.
`release` frees what a connection held, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional, Sequence

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisperlivekit.api.errors import FINISHED_AT_SHUTDOWN, INTERNAL_ERROR, NORMAL_END, Ending, ending_for
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.errors import WhisperLiveKitError
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.limits import SessionGuard
from whisperlivekit.services import Services

CLIENT_GONE = "client_gone"  # the outcome label when the client vanished mid-stream


class Connection:
    """A stream's socket for JSON protocols: sends are serialised (events, ticks, the goodbye),
    and neither a send nor a close to a client that has gone raises."""

    def __init__(self, websocket: WebSocket, log: logging.LoggerAdapter) -> None:
        self.websocket = websocket
        self.log = log
        self._lock = asyncio.Lock()

    async def send(self, message: dict) -> bool:
        async with self._lock:
            try:
                await self.websocket.send_text(json.dumps(message))
                return True
            except (WebSocketDisconnect, RuntimeError, ConnectionError):
                return False

    async def close(self, code: int, reason: str = "") -> None:
        if self.websocket.application_state != WebSocketState.DISCONNECTED:
            try:
                await self.websocket.close(code=code, reason=reason[:120])
            except (RuntimeError, WebSocketDisconnect):
                pass


@dataclass
class StreamParts:
    """What one protocol contributes to a stream.

    `receive(guard)`: client frames → engine until the client ends its audio (returns True, after
    calling `engine.end_of_audio()`) or vanishes (False); feeds inside `guard.feeding()`, sets
    `guard.input_ended`; raises typed errors for bad input.
    `send()`: engine output → client until the engine is finished; its result goes to `goodbye`.
    `goodbye(result, ending)`: the protocol's last messages and its close, for NORMAL_END or
    FINISHED_AT_SHUTDOWN.
    `extras`: more tasks that run alongside (e.g. a ticker), given the guard; an exception from one
    ends the stream.
    """

    receive: Callable[[SessionGuard], Awaitable[bool]]
    send: Callable[[], Awaitable[Any]]
    goodbye: Callable[[Any, Ending], Awaitable[None]]
    extras: Sequence[Callable[[SessionGuard], Awaitable[None]]] = field(default_factory=tuple)


async def cancel(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_stream(services: Services, engine: TranscriptionEngine, connection_id: str,
                     log: logging.LoggerAdapter, parts: StreamParts) -> str:
    """Run one admitted stream to its end; returns the outcome (a metric label). Raises typed
    errors (a limit, bad input, the pipeline's failure) for the adapter to close with."""
    guard = SessionGuard(services.settings, lambda: engine.backlog_s, lambda: engine.sent_audio.sent_s)
    finish_now = services.sessions.register(connection_id)
    sender = asyncio.create_task(parts.send())
    receiver = asyncio.create_task(parts.receive(guard))
    watchdog = asyncio.create_task(guard.watch())
    shutdown = asyncio.create_task(finish_now.wait())
    extras = [asyncio.create_task(extra(guard)) for extra in parts.extras]
    tasks = (sender, receiver, watchdog, shutdown, *extras)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and receiver.exception() is None and receiver.result():
            # clean end of audio: finish transcribing (the session cap still applies), then say goodbye
            done, _ = await asyncio.wait((sender, watchdog), return_when=asyncio.FIRST_COMPLETED)
            if watchdog in done:
                raise watchdog.exception()  # type: ignore[misc]
            result = sender.result()
            if engine.failure is not None:
                raise engine.failure
            await parts.goodbye(result, NORMAL_END)
            return NORMAL_END.label
        for task in (receiver, sender, watchdog, *extras):
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if shutdown in done:
            # drain deadline: treat as the end of audio, deliver the final transcript, then close
            log.info("finishing the stream: the server is shutting down")
            await cancel(receiver, watchdog)
            await engine.end_of_audio()
            result = await sender
            await parts.goodbye(result, FINISHED_AT_SHUTDOWN)
            return FINISHED_AT_SHUTDOWN.label
        log.info("client went away")
        return CLIENT_GONE
    finally:
        await cancel(*tasks)
        services.sessions.unregister(connection_id)


def count_refusal(services: Services, refusal: WhisperLiveKitError, log: Any) -> Ending:
    """Count and log a connection refused before it was admitted; returns how the table says to close it."""
    ending = ending_for(refusal)
    services.metrics.refused.labels(ending.label_for(refusal)).inc()
    log.info("refused: %s", refusal)
    return ending


def log_failure(log: Any, exc: BaseException) -> Ending:
    """Log why an admitted stream ends on an error (a bug gets its traceback); returns the table's ending."""
    ending = ending_for(exc)
    if ending.code == INTERNAL_ERROR.code and not isinstance(exc, WhisperLiveKitError):
        log.error("failed with an unexpected error", exc_info=exc)
    else:
        log.info("closing: %s", exc)
    return ending


async def release(services: Services, address: str, engine: Optional[TranscriptionEngine], slot: Optional[Slot],
                  outcome: str) -> None:
    """Free everything a connection held (its address count, engine, per-connection model, slot)."""
    services.addresses.remove(address)
    if engine is not None:
        services.active_engines.discard(engine)
        await engine.close()
        services.metrics.session_ended(engine, outcome)
        if services.settings.model_per_connection:
            await asyncio.to_thread(engine.worker.close)
    if slot is not None:
        services.manager.release(slot)
