"""`WS /v1/listen`: Deepgram's live streaming API, as its own SDK (`deepgram-sdk` 7.x) speaks it.

A thin adapter: client control messages (`KeepAlive`, `Finalize`, `CloseStream`) → engine calls,
engine events → Deepgram messages (by `deepgram_messages.ListenTranslator`, which also parses the
query string). Admission, limits, drain, auth and metrics are the same as `/asr`'s; refusals before
the handshake are HTTP errors with Deepgram's JSON body, errors in a stream an `Error` message and a
close, both from the one table in `api/errors.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Callable, List, Optional, Sequence

from fastapi import APIRouter, Depends, WebSocket
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisperlivekit.api.admission import build_on_slot
from whisperlivekit.api.asr import _gatekeeper
from whisperlivekit.api.deepgram_messages import ListenOptions, ListenTranslator, error_message, parse_options
from whisperlivekit.api.errors import Ending, deepgram_ending_for
from whisperlivekit.api.stream_runner import (
    CLIENT_GONE, Connection, StreamParts, count_refusal, log_failure, release, run_stream,
)
from whisperlivekit.asr.types import Word
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.errors import (
    BadParameters, FrameTooBig, NoCapacity, TextFrame, TooManyConnectionsFromAddress, WhisperLiveKitError,
)
from whisperlivekit.events import Final
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.limits import SessionGuard
from whisperlivekit.services import Services, get_ws_services

logger = logging.getLogger(__name__)
router = APIRouter()

REFUSAL_RETRY_AFTER_S = 5
UTTERANCE_TICK_S = 0.1


async def _deny(websocket: WebSocket, services: Services, refusal: WhisperLiveKitError, request_id: str, log) -> None:
    """Refuse before the handshake, as Deepgram does: an HTTP error with its JSON body."""
    ending = count_refusal(services, refusal, log)
    err_code = deepgram_ending_for(refusal).err_code
    headers = {"dg-request-id": request_id, "dg-error": str(refusal)[:200]}
    if ending.retry or isinstance(refusal, (NoCapacity, TooManyConnectionsFromAddress)):
        headers["Retry-After"] = str(REFUSAL_RETRY_AFTER_S)
    body = {"err_code": err_code, "err_msg": str(refusal), "request_id": request_id}
    try:
        await websocket.send_denial_response(JSONResponse(body, status_code=ending.http_status, headers=headers))
    except RuntimeError:  # a server without the denial extension: accept, tell, close
        await websocket.accept()
        connection = Connection(websocket, log)
        await connection.send(error_message(refusal))
        await connection.close(deepgram_ending_for(refusal).close_code, err_code)


async def _build(services: Services, slot: Slot, connection_id: str, options: ListenOptions):
    """A running engine on `slot` (or, after a device fault, on another GPU); returns (slot, engine)."""
    return await build_on_slot(services, slot, options.language, options.input_format)


def _control_type(text: str) -> str:
    try:
        message = json.loads(text)
    except ValueError:
        raise TextFrame("Text frames must be JSON control messages (KeepAlive, Finalize, CloseStream)") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if not isinstance(kind, str):
        raise TextFrame("A control message needs a string `type`")
    return kind


async def _receive(websocket: WebSocket, engine: TranscriptionEngine, max_frame_bytes: int, guard: SessionGuard, log) -> bool:
    """Client frames → engine. True after `CloseStream` (or an empty frame), False if the client vanished."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return False
        text = message.get("text")
        if text is not None:
            kind = _control_type(text)
            if kind == "Finalize":
                with guard.feeding():  # the client waits for the server here
                    await engine.finalize()
            elif kind == "CloseStream":
                break
            elif kind != "KeepAlive":
                log.info("ignoring control message %r", kind[:40])
            continue
        data = message.get("bytes") or b""
        if len(data) > max_frame_bytes:
            raise FrameTooBig(f"Frame of {len(data)} bytes exceeds the {max_frame_bytes}-byte limit")
        if not data:
            break
        with guard.feeding():
            await engine.feed(data)
    guard.input_ended = True
    await engine.end_of_audio()
    return True


async def _send_events(connection: Connection, engine: TranscriptionEngine, events, translator: ListenTranslator) -> float:
    """Engine events → messages until `Final`; returns the audio duration."""
    async for event in events:
        if isinstance(event, Final):
            return event.audio_s
        for message in translator.on_event(event, engine.received_s):
            await connection.send(message)
    return engine.received_s


async def _tick_utterance_ends(connection: Connection, engine: TranscriptionEngine, translator: ListenTranslator) -> None:
    while True:
        await asyncio.sleep(UTTERANCE_TICK_S)
        message = translator.utterance_end(engine.received_s)
        if message is not None:
            await connection.send(message)


def _parts(connection: Connection, engine: TranscriptionEngine, translator: ListenTranslator,
           max_frame_bytes: int) -> StreamParts:
    """`/v1/listen`'s side of the shared stream loop: audio and control messages in, Deepgram
    messages out, the `UtteranceEnd` ticker alongside, `Metadata` last."""
    events = engine.events()  # before any audio is fed

    async def goodbye(audio_s: float, ending: Ending) -> None:
        await connection.send(translator.metadata(audio_s))
        await connection.close(ending.code, ending.reason)

    return StreamParts(
        receive=lambda guard: _receive(connection.websocket, engine, max_frame_bytes, guard, connection.log),
        send=lambda: _send_events(connection, engine, events, translator),
        goodbye=goodbye,
        extras=(lambda _guard: _tick_utterance_ends(connection, engine, translator),),
    )


async def _end_with_error(connection: Connection, exc: BaseException) -> str:
    """Deepgram's error message, then its close code; returns the outcome label."""
    ending = log_failure(connection.log, exc)
    await connection.send(error_message(exc))
    dg = deepgram_ending_for(exc)
    await connection.close(dg.close_code, dg.err_code)
    return ending.label_for(exc)


def _speaker_lookup(engine: TranscriptionEngine) -> Optional[Callable[[Sequence[Word]], List[int]]]:
    """Each word's speaker (0-based, as Deepgram numbers them) from the diarization heard so far."""
    if engine.diarization is None:
        return None
    from whisperlivekit.diarization import assign_speakers

    def speakers(words: Sequence[Word]) -> List[int]:
        return [max(0, s - 1) for s in assign_speakers(list(words), list(engine.diarization.segments))]

    return speakers


@router.websocket("/v1/listen")
async def listen(websocket: WebSocket, services: Services = Depends(get_ws_services)) -> None:
    connection_id = str(uuid.uuid4())
    log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": "unassigned"})
    settings = services.settings
    metrics = services.metrics
    address = websocket.client.host if websocket.client else "unknown"
    refusal = _gatekeeper(services, websocket, address)
    if refusal is not None:
        await _deny(websocket, services, refusal, connection_id, log)
        return
    try:
        options = parse_options(websocket.query_params, settings.language, services.pool.languages(), settings.model)
    except BadParameters as exc:
        await _deny(websocket, services, exc, connection_id, log)
        return
    if not services.addresses.try_add(address):
        await _deny(websocket, services, TooManyConnectionsFromAddress("Too many connections from this address"),
                    connection_id, log)
        return
    slot: Optional[Slot] = None
    engine: Optional[TranscriptionEngine] = None
    outcome = "error"
    connection = Connection(websocket, log)
    try:
        waited_from = time.monotonic()
        try:  # before the handshake, so that a full server answers with an HTTP error
            slot = await services.manager.acquire_waiting(connection_id, settings.queue_timeout_s)
        except NoCapacity as exc:
            await _deny(websocket, services, exc, connection_id, log)
            return
        await websocket.accept()
        acquired, slot = slot, None  # `_build` releases it if the build fails
        slot, engine = await _build(services, acquired, connection_id, options)
        metrics.slot_wait.observe(time.monotonic() - waited_from)
        metrics.accepted.inc()
        metrics.streams.labels("deepgram").inc()
        connection.log = log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": slot.label})
        log.info("deepgram stream: %s", options)
        services.active_engines.add(engine)
        if options.endpointing_s is not None:
            engine.lengthen_endpoint_silence(options.endpointing_s)
        speakers = _speaker_lookup(engine) if options.diarize else None
        translator = ListenTranslator(options, connection_id, settings.model, speakers)
        parts = _parts(connection, engine, translator, settings.max_frame_bytes)
        outcome = await run_stream(services, engine, connection_id, log, parts)
    except WebSocketDisconnect:
        outcome = CLIENT_GONE
        log.info("client disconnected")
    except Exception as exc:  # typed errors and bugs alike: the table says how to close
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept()
        outcome = await _end_with_error(connection, exc)
    finally:
        await release(services, address, engine, slot, outcome)
