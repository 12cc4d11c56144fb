"""`WS /asr`: check, admit, build the connection's engine, stream audio in and results out, release.

Security checks live in `api/security.py`, limits in `limits.py`, drain in `lifecycle.py`,
metrics in `metrics.py`; this module maps their outcomes to close codes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Optional, Tuple

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisperlivekit.api import security
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.errors import DecodeError, DeviceError, LimitExceeded, ModelLoadError, NoCapacity, ProtocolViolation
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.limits import SessionGuard
from whisperlivekit.protocol import READY_TO_STOP, config_message, error_message
from whisperlivekit.services import Services, get_ws_services

logger = logging.getLogger(__name__)
router = APIRouter()

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_BAD_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_BAD_PARAMS = 4400
_LANGUAGE = re.compile(r"^(auto|[a-z]{2,3}(-[A-Za-z]{2,4})?)$")


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    if websocket.application_state != WebSocketState.DISCONNECTED:
        try:
            await websocket.close(code=code, reason=reason[:120])
        except (RuntimeError, WebSocketDisconnect):
            pass


async def _send(websocket: WebSocket, message: dict) -> bool:
    try:
        await websocket.send_json(message)
        return True
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        return False


def _language(services: Services, requested: Optional[str]) -> Optional[str]:
    language = requested or services.settings.language
    if not _LANGUAGE.match(language):
        raise ValueError(f"invalid language {language!r}: use an ISO 639-1 code such as 'en', or 'auto'")
    return None if language == "auto" else language


async def _admit_and_build(services: Services, websocket: WebSocket, connection_id: str, language: Optional[str]):
    """A slot and a running engine; a device that fails while building is marked unhealthy and the
    connection is retried once on another GPU."""
    async def on_queued(position: int) -> None:
        await _send(websocket, {"type": "queued", "position": position})

    manager = services.manager
    slot = await manager.acquire_waiting(connection_id, services.settings.queue_timeout_s, on_queued)
    for attempt in (1, 2):
        try:
            return slot, await services.engine_factory(services, slot, language)
        except (DeviceError, ModelLoadError, RuntimeError) as exc:
            manager.release(slot)
            if slot.gpu_id is None or attempt == 2:
                raise
            manager.mark_unhealthy(slot.gpu_id, f"engine build failed: {exc}")
            logger.warning("engine build failed on %s (%s); retrying on another GPU", slot.label, exc,
                           extra={"connection_id": connection_id, "device": slot.label})
            slot = manager.acquire(connection_id, exclude=(slot.gpu_id,))
    raise AssertionError("unreachable")


async def _receive_audio(websocket: WebSocket, engine: TranscriptionEngine, max_frame_bytes: int, guard: SessionGuard) -> bool:
    """Client frames → engine. Returns True on a clean end of audio, False if the client vanished."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return False
        if message.get("text") is not None:
            raise ProtocolViolation("Text frames are not supported: send audio as binary frames", CLOSE_UNSUPPORTED)
        data = message.get("bytes") or b""
        if len(data) > max_frame_bytes:
            raise ProtocolViolation(f"Frame of {len(data)} bytes exceeds the {max_frame_bytes}-byte limit", CLOSE_TOO_BIG)
        if not data:
            guard.input_ended = True
            await engine.end_of_audio()
            return True
        with guard.feeding():  # a decoder that pushes back is the server's time, not the client's
            await engine.feed(data)


async def _send_results(websocket: WebSocket, engine: TranscriptionEngine) -> None:
    async for update in engine.updates():
        if not await _send(websocket, update):
            return


async def _cancel(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _gatekeeper(services: Services, websocket: WebSocket, address: str) -> Optional[Tuple[int, str, str]]:
    """(close code, reason, metric label) for a connection refused before admission, else None."""
    settings = services.settings
    if not security.origin_ok(settings, websocket.headers):
        return security.CLOSE_ORIGIN_NOT_ALLOWED, "Origin not allowed", "origin"
    auth = security.check_token(settings, services.auth_throttle, address, websocket.headers, websocket.query_params)
    if auth == security.AUTH_THROTTLED:
        return security.CLOSE_UNAUTHORIZED, "Too many failed attempts: try again later", auth
    if auth == security.AUTH_FAILED:
        return security.CLOSE_UNAUTHORIZED, "Unauthorized", "unauthorized"
    if services.draining:
        return CLOSE_GOING_AWAY, "Server is shutting down", "draining"
    return None


async def _stream(websocket: WebSocket, services: Services, engine: TranscriptionEngine, connection_id: str, log) -> str:
    """Run one admitted stream to its end; returns the outcome (a metric label). Raises typed errors."""
    settings = services.settings
    guard = SessionGuard(settings, lambda: engine.backlog_s, lambda: engine.received_s)
    finish_now = services.sessions.register(connection_id)
    sender = asyncio.create_task(_send_results(websocket, engine))
    receiver = asyncio.create_task(_receive_audio(websocket, engine, settings.max_frame_bytes, guard))
    watchdog = asyncio.create_task(guard.watch())
    shutdown = asyncio.create_task(finish_now.wait())
    tasks = (sender, receiver, watchdog, shutdown)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and receiver.exception() is None and receiver.result():
            # clean end of audio: finish transcribing (the session cap still applies), then say goodbye
            done, _ = await asyncio.wait((sender, watchdog), return_when=asyncio.FIRST_COMPLETED)
            if watchdog in done:
                raise watchdog.exception()  # type: ignore[misc]
            sender.result()
            if engine.error:
                raise DecodeError(engine.error)
            await _send(websocket, READY_TO_STOP)
            await _close(websocket, CLOSE_NORMAL)
            return "completed"
        for task in (receiver, sender, watchdog):
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if shutdown in done:
            # drain deadline: treat as the end of audio, deliver the final transcript, then close
            log.info("finishing the stream: the server is shutting down")
            await _cancel(receiver, watchdog)
            await engine.end_of_audio()
            await sender
            await _send(websocket, READY_TO_STOP)
            await _close(websocket, CLOSE_GOING_AWAY, "Server is shutting down")
            return "shutdown"
        log.info("client went away")
        return "client_gone"
    finally:
        await _cancel(*tasks)
        services.sessions.unregister(connection_id)


@router.websocket("/asr")
async def asr(websocket: WebSocket, services: Services = Depends(get_ws_services)) -> None:
    connection_id = str(uuid.uuid4())
    log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": "unassigned"})
    metrics = services.metrics
    await websocket.accept()
    address = websocket.client.host if websocket.client else "unknown"
    refusal = _gatekeeper(services, websocket, address)
    if refusal is not None:
        code, reason, label = refusal
        metrics.refused.labels(label).inc()
        log.info("refused: %s", reason)
        await _close(websocket, code, reason)
        return
    try:
        language = _language(services, websocket.query_params.get("language"))
    except ValueError as exc:
        metrics.refused.labels("bad_parameters").inc()
        await _send(websocket, error_message(str(exc)))
        await _close(websocket, CLOSE_BAD_PARAMS, "Bad parameters")
        return
    if not services.addresses.try_add(address):
        metrics.refused.labels("per_address").inc()
        log.info("refused: too many connections from this address")
        await _close(websocket, CLOSE_POLICY, "Too many connections from this address")
        return
    slot: Optional[Slot] = None
    engine: Optional[TranscriptionEngine] = None
    outcome = "error"
    try:
        try:
            waited_from = time.monotonic()
            slot, engine = await _admit_and_build(services, websocket, connection_id, language)
        except NoCapacity as exc:
            metrics.refused.labels(str(exc)).inc()
            log.info("refused: %s", exc)
            await _close(websocket, CLOSE_POLICY, str(exc))
            return
        metrics.slot_wait.observe(time.monotonic() - waited_from)
        metrics.accepted.inc()
        log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": slot.label})
        services.active_engines.add(engine)
        await _send(websocket, config_message(
            use_audio_worklet=services.settings.pcm_input, gpu_id=slot.gpu_id, device=slot.reported_device,
            connection_id=connection_id, simulated=slot.simulated,
        ))
        outcome = await _stream(websocket, services, engine, connection_id, log)
    except LimitExceeded as exc:
        outcome = "limit"
        log.info("closing: %s (%s)", exc.reason, exc)
        await _send(websocket, error_message(str(exc)))
        await _close(websocket, exc.close_code, exc.reason)
    except ProtocolViolation as exc:
        outcome = "protocol_error"
        await _send(websocket, error_message(str(exc)))
        await _close(websocket, exc.close_code, str(exc))
    except DecodeError as exc:
        outcome = "decode_error"
        await _send(websocket, {**error_message(str(exc)), "lines": [], "buffer_transcription": ""})
        await _close(websocket, CLOSE_BAD_DATA, "Could not decode audio")
    except (DeviceError, ModelLoadError) as exc:
        log.error("failed on the device: %s", exc)
        await _send(websocket, error_message(f"Server error: {exc}"))
        await _close(websocket, CLOSE_INTERNAL, "Inference failed")
    except WebSocketDisconnect:
        outcome = "client_gone"
        log.info("client disconnected")
    finally:
        services.addresses.remove(address)
        if engine is not None:
            services.active_engines.discard(engine)
            await engine.close()
            metrics.session_ended(engine, outcome)
            if services.settings.model_per_connection:
                await asyncio.to_thread(engine.worker.close)
        if slot is not None:
            services.manager.release(slot)
