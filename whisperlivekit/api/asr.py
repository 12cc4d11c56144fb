"""`WS /asr`: admit, build the connection's engine, stream audio in and results out, release."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Optional

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.errors import DecodeError, DeviceError, ModelLoadError, NoCapacity, ProtocolViolation
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.protocol import READY_TO_STOP, config_message, error_message
from whisperlivekit.services import Services, get_ws_services

logger = logging.getLogger(__name__)
router = APIRouter()

CLOSE_NORMAL = 1000
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
            logger.warning("[%s] engine build failed on %s (%s); retrying on another GPU", connection_id[:8], slot.label, exc)
            slot = manager.acquire(connection_id, exclude=(slot.gpu_id,))
    raise AssertionError("unreachable")


async def _receive_audio(websocket: WebSocket, engine: TranscriptionEngine, max_frame_bytes: int) -> bool:
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
            await engine.end_of_audio()
            return True
        await engine.feed(data)


async def _send_results(websocket: WebSocket, engine: TranscriptionEngine) -> None:
    async for update in engine.updates():
        if not await _send(websocket, update):
            return


@router.websocket("/asr")
async def asr(websocket: WebSocket, services: Services = Depends(get_ws_services)) -> None:
    connection_id = str(uuid.uuid4())
    log = logging.LoggerAdapter(logger, {"connection_id": connection_id})
    await websocket.accept()
    try:
        language = _language(services, websocket.query_params.get("language"))
    except ValueError as exc:
        await _send(websocket, error_message(str(exc)))
        await _close(websocket, CLOSE_BAD_PARAMS, "Bad parameters")
        return
    if services.draining:
        await _close(websocket, CLOSE_POLICY, "Server is shutting down")
        return
    slot: Optional[Slot] = None
    engine: Optional[TranscriptionEngine] = None
    try:
        try:
            slot, engine = await _admit_and_build(services, websocket, connection_id, language)
        except NoCapacity as exc:
            log.info("refused connection %s: %s", connection_id, exc)
            await _close(websocket, CLOSE_POLICY, str(exc))
            return
        services.active_engines.add(engine)
        await _send(websocket, config_message(
            use_audio_worklet=services.settings.pcm_input, gpu_id=slot.gpu_id, device=slot.reported_device,
            connection_id=connection_id, simulated=slot.simulated,
        ))
        sender = asyncio.create_task(_send_results(websocket, engine))
        receiver = asyncio.create_task(_receive_audio(websocket, engine, services.settings.max_frame_bytes))
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and receiver.exception() is None and receiver.result():
            await sender  # clean end of audio: finish transcribing, then say goodbye
            if engine.error:
                raise DecodeError(engine.error)
            await _send(websocket, READY_TO_STOP)
            await _close(websocket, CLOSE_NORMAL)
        elif receiver in done and receiver.exception() is not None:
            sender.cancel()
            raise receiver.exception()  # type: ignore[misc]
        elif sender in done and sender.exception() is not None:
            receiver.cancel()
            raise sender.exception()  # type: ignore[misc]
        else:
            for task in (sender, receiver):
                task.cancel()
            log.info("client %s went away", connection_id)
    except ProtocolViolation as exc:
        await _send(websocket, error_message(str(exc)))
        await _close(websocket, exc.close_code, str(exc))
    except DecodeError as exc:
        await _send(websocket, {**error_message(str(exc)), "lines": [], "buffer_transcription": ""})
        await _close(websocket, CLOSE_BAD_DATA, "Could not decode audio")
    except (DeviceError, ModelLoadError) as exc:
        log.error("connection %s failed on the device: %s", connection_id, exc)
        await _send(websocket, error_message(f"Server error: {exc}"))
        await _close(websocket, CLOSE_INTERNAL, "Inference failed")
    except WebSocketDisconnect:
        log.info("client %s disconnected", connection_id)
    finally:
        if engine is not None:
            services.active_engines.discard(engine)
            await engine.close()
            if services.settings.model_per_connection:
                await asyncio.to_thread(engine.worker.close)
        if slot is not None:
            services.manager.release(slot)
