"""`WS /asr`: check, admit, build the connection's engine, stream audio in and results out, release.

Security checks live in `api/security.py`, limits in `limits.py`, drain in `lifecycle.py`,
metrics in `metrics.py`; they raise typed errors, and `api/errors.py` says how each one closes.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Optional

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisperlivekit.api import security
from whisperlivekit.api.admission import build_on_slot
from whisperlivekit.api.params import parse_language, parse_mode, parse_words
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.api.errors import INTERNAL_ERROR, Ending, ending_for
from whisperlivekit.api.stream_runner import CLIENT_GONE, StreamParts, count_refusal, release, run_stream
from whisperlivekit.errors import (
    BadParameters, DecodeError, FrameTooBig, NoCapacity, OriginNotAllowed, ServerShuttingDown, TextFrame,
    TooManyConnectionsFromAddress, WhisperLiveKitError,
)
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.limits import SessionGuard
from whisperlivekit.protocol import READY_TO_STOP, config_message, error_message, update_encoder
from whisperlivekit.services import Services, get_ws_services

logger = logging.getLogger(__name__)
router = APIRouter()



async def _close(websocket: WebSocket, ending: Ending, exc: Optional[BaseException] = None) -> None:
    if websocket.application_state != WebSocketState.DISCONNECTED:
        try:
            await websocket.close(code=ending.code, reason=ending.reason_for(exc)[:120])
        except (RuntimeError, WebSocketDisconnect):
            pass


async def _send(websocket: WebSocket, message: dict) -> bool:
    try:
        await websocket.send_json(message)
        return True
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        return False


async def _admit_and_build(services: Services, websocket: WebSocket, connection_id: str, language: Optional[str]):
    """A slot and a running engine. A device fault while building marks the GPU unhealthy and the
    connection is retried once on another GPU; any other failure (a bug) is raised as it is."""
    async def on_queued(position: int) -> None:
        await _send(websocket, {"type": "queued", "position": position})

    manager = services.manager
    slot = await manager.acquire_waiting(connection_id, services.settings.queue_timeout_s, on_queued)
    return await build_on_slot(services, slot, language)


async def _receive_audio(websocket: WebSocket, engine: TranscriptionEngine, max_frame_bytes: int, guard: SessionGuard) -> bool:
    """Client frames → engine. Returns True on a clean end of audio, False if the client vanished."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return False
        if message.get("text") is not None:
            raise TextFrame("Text frames are not supported: send audio as binary frames")
        data = message.get("bytes") or b""
        if len(data) > max_frame_bytes:
            raise FrameTooBig(f"Frame of {len(data)} bytes exceeds the {max_frame_bytes}-byte limit")
        if not data:
            guard.input_ended = True
            await engine.end_of_audio()
            return True
        with guard.feeding():  # a decoder that pushes back is the server's time, not the client's
            await engine.feed(data)


async def _send_results(websocket: WebSocket, engine: TranscriptionEngine, mode: str, words: bool) -> None:
    encode = update_encoder(mode, words)  # `?mode=diff`: a snapshot, then diffs; `?words=`: lines' words
    async for update in engine.updates():
        if not await _send(websocket, encode(update)):
            return


def _gatekeeper(services: Services, websocket: WebSocket, address: str) -> Optional[WhisperLiveKitError]:
    """Why a connection is refused before admission, else None."""
    settings = services.settings
    if not security.origin_ok(settings, websocket.headers):
        return OriginNotAllowed("Origin not allowed")
    refusal = security.token_refusal(settings, services.auth_throttle, address, websocket.headers, websocket.query_params)
    if refusal is not None:
        return refusal
    if services.draining:
        return ServerShuttingDown("Server is shutting down")
    return None


def _parts(websocket: WebSocket, engine: TranscriptionEngine, max_frame_bytes: int, mode: str, words: bool) -> StreamParts:
    """`/asr`'s side of the shared stream loop: binary frames in, snapshots out, `ready_to_stop` last."""
    async def goodbye(_result: None, ending: Ending) -> None:
        await _send(websocket, READY_TO_STOP)
        await _close(websocket, ending)

    return StreamParts(
        receive=lambda guard: _receive_audio(websocket, engine, max_frame_bytes, guard),
        send=lambda: _send_results(websocket, engine, mode, words),
        goodbye=goodbye,
    )


async def _refuse(websocket: WebSocket, services: Services, refusal: WhisperLiveKitError, log, tell: bool = False) -> None:
    """Close a connection that was never admitted; `tell` sends the error message first."""
    ending = count_refusal(services, refusal, log)
    if tell:
        await _send(websocket, error_message(str(refusal)))
    await _close(websocket, ending, refusal)


async def _end_with_error(websocket: WebSocket, exc: BaseException, log) -> str:
    """Tell the client what went wrong and close as the table says; returns the outcome label."""
    ending = ending_for(exc)
    if isinstance(exc, DecodeError):
        await _send(websocket, {**error_message(str(exc)), "lines": [], "buffer_transcription": ""})
    elif ending.code == INTERNAL_ERROR.code:
        if isinstance(exc, WhisperLiveKitError):
            log.error("failed: %s", exc)
            await _send(websocket, error_message(f"Server error: {exc}"))
        else:  # a bug: the traceback goes to the log, not to the client
            log.error("failed with an unexpected error", exc_info=exc)
            await _send(websocket, error_message("Server error: an internal error (see the server log)"))
    else:
        log.info("closing: %s (%s)", ending.reason_for(exc), exc)
        await _send(websocket, error_message(str(exc)))
    await _close(websocket, ending, exc)
    return ending.label_for(exc)


@router.websocket("/asr")
async def asr(websocket: WebSocket, services: Services = Depends(get_ws_services)) -> None:
    connection_id = str(uuid.uuid4())
    log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": "unassigned"})
    metrics = services.metrics
    await websocket.accept()
    address = websocket.client.host if websocket.client else "unknown"
    refusal = _gatekeeper(services, websocket, address)
    if refusal is not None:
        await _refuse(websocket, services, refusal, log)
        return
    try:
        settings = services.settings
        language = parse_language(websocket.query_params.get("language"), settings.language,
                                  services.pool.languages(), settings.model)
        mode = parse_mode(websocket.query_params.get("mode"))
        words = parse_words(websocket.query_params.get("words"), mode)
    except BadParameters as exc:
        await _refuse(websocket, services, exc, log, tell=True)
        return
    if not services.addresses.try_add(address):
        await _refuse(websocket, services, TooManyConnectionsFromAddress("Too many connections from this address"), log)
        return
    slot: Optional[Slot] = None
    engine: Optional[TranscriptionEngine] = None
    outcome = "error"
    try:
        try:
            waited_from = time.monotonic()
            slot, engine = await _admit_and_build(services, websocket, connection_id, language)
        except NoCapacity as exc:
            await _refuse(websocket, services, exc, log)
            return
        metrics.slot_wait.observe(time.monotonic() - waited_from)
        metrics.accepted.inc()
        metrics.streams.labels("asr").inc()
        log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": slot.label})
        services.active_engines.add(engine)
        await _send(websocket, config_message(
            use_audio_worklet=services.settings.pcm_input, gpu_id=slot.gpu_id, device=slot.reported_device,
            connection_id=connection_id, mode=mode, simulated=slot.simulated,
        ))
        outcome = await run_stream(services, engine, connection_id, log,
                                   _parts(websocket, engine, services.settings.max_frame_bytes, mode, words))
    except WebSocketDisconnect:
        outcome = CLIENT_GONE
        log.info("client disconnected")
    except Exception as exc:  # typed errors and bugs alike: the table says how to close
        outcome = await _end_with_error(websocket, exc, log)
    finally:
        await release(services, address, engine, slot, outcome)
