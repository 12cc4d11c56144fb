"""`WS /v1/listen`: Deepgram's live streaming API, as its own SDK (`deepgram-sdk` 7.x) speaks it.

A thin adapter: query parameters → `ListenOptions` (and the connection's input format),
client control messages (`KeepAlive`, `Finalize`, `CloseStream`) → engine calls, engine events
(`events.py`) → `Results` / `SpeechStarted` / `UtteranceEnd` / `Metadata` by `ListenTranslator`.
Admission, limits, drain, auth and metrics are the same as `/asr`'s; refusals before the
handshake are HTTP errors with Deepgram's JSON body, errors in a stream an `Error` message and
a close, both from the one table in `api/errors.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, List, Optional, Sequence

from fastapi import APIRouter, Depends, WebSocket
from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from whisperlivekit.api.asr import _gatekeeper
from whisperlivekit.api.errors import (
    FINISHED_AT_SHUTDOWN, INTERNAL_ERROR, NORMAL_END, deepgram_ending_for, ending_for, is_device_fault,
)
from whisperlivekit.api.params import AUTO, parse_language
from whisperlivekit.asr.types import Word
from whisperlivekit.audio.decode import InputFormat
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.errors import (
    BadParameters, FrameTooBig, NoCapacity, TextFrame, TooManyConnectionsFromAddress, WhisperLiveKitError,
)
from whisperlivekit.events import BY_FINALIZE, BY_VAD, Committed, EngineEvent, Final, Partial, SpeechStarted
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.limits import SessionGuard
from whisperlivekit.services import Services, get_ws_services

logger = logging.getLogger(__name__)
router = APIRouter()

CHANNEL = [0, 1]  # Deepgram's `channel_index`: channel 0 of 1
MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 8_000, 48_000
MAX_CHANNELS = 8
REFUSAL_RETRY_AFTER_S = 5
UTTERANCE_TICK_S = 0.1
_EDGE_PUNCTUATION = string.punctuation + "“”‘’«»…¿¡"


# -- query parameters -----------------------------------------------------------------
@dataclass(frozen=True)
class ListenOptions:
    """One connection's choices, from its query string."""

    input_format: InputFormat
    language: Optional[str]  # None: detect
    interim_results: bool = False
    endpointing: bool = True  # `speech_final=true` when the speaker pauses (the VAD's silence)
    utterance_end_s: Optional[float] = None
    vad_events: bool = False
    diarize: bool = False
    model: str = ""


def _flag(query: QueryParams, name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadParameters(f"{name} must be true or false, not {value!r}")


def _integer(query: QueryParams, name: str, low: int, high: int) -> Optional[int]:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadParameters(f"{name} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise BadParameters(f"{name} must be between {low} and {high}, not {number}")
    return number


def deepgram_language(requested: Optional[str]) -> Optional[str]:
    """Deepgram's tag → ours: `multi` means detection, a region is dropped (`en-US` → `en`)."""
    if requested is None or requested == "":
        return None
    if requested.lower() == "multi":
        return AUTO
    return requested.split("-")[0].lower()


def parse_options(query: QueryParams, default_language: str, languages, model: str) -> ListenOptions:
    """Raises `BadParameters` saying what is allowed."""
    encoding = query.get("encoding")
    channels = _integer(query, "channels", 1, MAX_CHANNELS) or 1
    if encoding in (None, ""):
        input_format = InputFormat(pcm=False)  # a container: ffmpeg finds out what is inside
    elif encoding == "linear16":
        sample_rate = _integer(query, "sample_rate", MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
        if sample_rate is None:
            raise BadParameters("encoding=linear16 needs sample_rate (8000-48000)")
        input_format = InputFormat(pcm=True, sample_rate_hz=sample_rate, channels=channels)
    else:
        raise BadParameters(f"encoding {encoding!r} is not supported: use linear16, or no encoding for "
                            "containerised audio (WebM, Ogg, WAV, MP3, FLAC)")
    if _flag(query, "multichannel", False):
        raise BadParameters("multichannel=true is not supported: channels are mixed to one")
    endpointing_value = query.get("endpointing")
    endpointing = True
    if endpointing_value not in (None, ""):
        if endpointing_value.lower() == "false":
            endpointing = False
        else:
            _integer(query, "endpointing", 0, 60_000)  # accepted; the VAD's own silence is the floor
    utterance_end_ms = _integer(query, "utterance_end_ms", 1, 60_000)
    for accepted in ("punctuate", "smart_format", "numerals", "profanity_filter", "dictation"):
        _flag(query, accepted, False)  # Whisper punctuates and formats anyway
    language = parse_language(deepgram_language(query.get("language")), default_language, languages, model)
    return ListenOptions(
        input_format=input_format,
        language=language,
        interim_results=_flag(query, "interim_results", False),
        endpointing=endpointing,
        utterance_end_s=utterance_end_ms / 1000 if utterance_end_ms else None,
        vad_events=_flag(query, "vad_events", False),
        diarize=_flag(query, "diarize", False),
        model=query.get("model") or "",
    )


# -- engine events → Deepgram messages ------------------------------------------------
def _plain(text: str) -> str:
    """Deepgram's `word`: lower case, no surrounding punctuation (`punctuated_word` keeps it)."""
    stripped = text.strip()
    return stripped.strip(_EDGE_PUNCTUATION).lower() or stripped.lower()


class ListenTranslator:
    """Engine events → Deepgram messages for one connection (no I/O, so it is unit-testable).

    Final `Results` tile the audio: each starts where the previous final one ended. A segment
    closed by the VAD (or the end of the stream) sets `speech_final`; one closed by `Finalize`
    sets `from_finalize`. `speakers` gives each word's speaker (0-based) when diarizing.
    """

    def __init__(self, options: ListenOptions, request_id: str, model_name: str,
                 speakers: Optional[Callable[[Sequence[Word]], List[int]]] = None) -> None:
        self.options = options
        self.request_id = request_id
        self.model_name = model_name
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"whisperlivekit:{model_name}"))
        self.speakers = speakers
        self.final_until_s = 0.0
        self.open_since_speech_final = False  # final words sent since the last speech_final
        self.last_word_end_s: Optional[float] = None
        self.words_since_utterance_end = False
        self.tentative: Sequence[Word] = ()

    def on_event(self, event: EngineEvent, received_s: float) -> List[dict]:
        if isinstance(event, Partial):
            return self._partial(event)
        if isinstance(event, Committed):
            return self._committed(event, received_s)
        if isinstance(event, SpeechStarted):
            return [{"type": "SpeechStarted", "channel": CHANNEL, "timestamp": round(event.at_s, 3)}] \
                if self.options.vad_events else []
        return []

    def _partial(self, event: Partial) -> List[dict]:
        self.tentative = event.words
        if event.words:
            self._heard(event.words)
        if not self.options.interim_results or not event.words:
            return []
        end = max(self.final_until_s, event.words[-1].end)
        return [self.results(event.words, self.final_until_s, end, is_final=False)]

    def _committed(self, event: Committed, received_s: float) -> List[dict]:
        words = event.words
        if words:
            self._heard(words)
            self.open_since_speech_final = True
        closes = event.closed_by is not None
        if not words and not (event.closed_by == BY_FINALIZE or (closes and self.open_since_speech_final)):
            return []
        start = self.final_until_s
        end = max(start, words[-1].end if words else start, received_s if closes else start)
        speech_final = closes and event.closed_by != BY_FINALIZE and self.options.endpointing
        if speech_final:
            self.open_since_speech_final = False
        self.final_until_s = end
        return [self.results(words, start, end, is_final=True, speech_final=speech_final,
                             from_finalize=event.closed_by == BY_FINALIZE)]

    def _heard(self, words: Sequence[Word]) -> None:
        self.last_word_end_s = max(self.last_word_end_s or 0.0, words[-1].end)
        self.words_since_utterance_end = True

    def utterance_end(self, received_s: float) -> Optional[dict]:
        """`UtteranceEnd` once `utterance_end_ms` pass after the last word with nothing tentative."""
        gap_s = self.options.utterance_end_s
        if gap_s is None or not self.words_since_utterance_end or self.tentative or self.last_word_end_s is None:
            return None
        if received_s - self.last_word_end_s < gap_s:
            return None
        self.words_since_utterance_end = False
        return {"type": "UtteranceEnd", "channel": CHANNEL, "last_word_end": round(self.last_word_end_s, 3)}

    def results(self, words: Sequence[Word], start_s: float, end_s: float, *, is_final: bool,
                speech_final: bool = False, from_finalize: bool = False) -> dict:
        speakers = self.speakers(words) if self.speakers is not None and words else None
        listed: List[dict] = []
        prefix = ""  # opening punctuation waits for its word
        for i, word in enumerate(words):
            text = word.text.strip()
            if text and not text.strip(_EDGE_PUNCTUATION):  # Whisper gives punctuation its own "word"
                if listed:
                    listed[-1]["punctuated_word"] += text
                else:
                    prefix += text
                continue
            item = {"word": _plain(text), "punctuated_word": prefix + text, "start": round(word.start, 3),
                    "end": round(word.end, 3), "confidence": round(float(word.probability), 4)}
            prefix = ""
            if speakers is not None:
                item["speaker"] = speakers[i]
            listed.append(item)
        confidence = sum(w["confidence"] for w in listed) / len(listed) if listed else 0.0
        message = {
            "type": "Results",
            "channel_index": CHANNEL,
            "duration": round(max(0.0, end_s - start_s), 3),
            "start": round(start_s, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {"alternatives": [{
                "transcript": "".join(w.text for w in words).strip(),
                "confidence": round(confidence, 4),
                "words": listed,
            }]},
            "metadata": {"request_id": self.request_id, "model_uuid": self.model_uuid,
                         "model_info": {"name": self.model_name, "version": "whisperlivekit", "arch": "whisper"}},
        }
        if from_finalize:
            message["from_finalize"] = True
        return message

    def metadata(self, audio_s: float) -> dict:
        return {
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id, "sha256": "",
            "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(audio_s, 3), "channels": 1, "models": [self.model_uuid],
            "model_info": {self.model_uuid: {"name": self.model_name, "version": "whisperlivekit", "arch": "whisper"}},
        }


def error_message(exc: BaseException) -> dict:
    """Deepgram's in-stream error message; a bug's details stay in the log."""
    code = deepgram_ending_for(exc).err_code
    shown = str(exc) if isinstance(exc, WhisperLiveKitError) else "internal error (see the server log)"
    return {"type": "Error", "variant": "error", "code": code, "description": shown, "message": shown}


# -- the connection ---------------------------------------------------------------------
class _Connection:
    """One `/v1/listen` stream: sends are serialised (events, UtteranceEnd ticks, the goodbye)."""

    def __init__(self, websocket: WebSocket, log) -> None:
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


async def _deny(websocket: WebSocket, services: Services, refusal: WhisperLiveKitError, request_id: str, log) -> None:
    """Refuse before the handshake, as Deepgram does: an HTTP error with its JSON body."""
    ending = ending_for(refusal)
    services.metrics.refused.labels(ending.label_for(refusal)).inc()
    log.info("refused: %s", refusal)
    err_code = deepgram_ending_for(refusal).err_code
    headers = {"dg-request-id": request_id, "dg-error": str(refusal)[:200]}
    if ending.retry or isinstance(refusal, (NoCapacity, TooManyConnectionsFromAddress)):
        headers["Retry-After"] = str(REFUSAL_RETRY_AFTER_S)
    body = {"err_code": err_code, "err_msg": str(refusal), "request_id": request_id}
    try:
        await websocket.send_denial_response(JSONResponse(body, status_code=ending.http_status, headers=headers))
    except RuntimeError:  # a server without the denial extension: accept, tell, close
        await websocket.accept()
        connection = _Connection(websocket, log)
        await connection.send(error_message(refusal))
        await connection.close(deepgram_ending_for(refusal).close_code, err_code)


async def _build(services: Services, slot: Slot, connection_id: str, options: ListenOptions):
    """A running engine on `slot` (or, after a device fault, on another GPU); returns (slot, engine)."""
    manager = services.manager
    for attempt in (1, 2):
        try:
            return slot, await services.engine_factory(services, slot, options.language, input_format=options.input_format)
        except Exception as exc:
            manager.release(slot)
            if not is_device_fault(exc) or slot.gpu_id is None or attempt == 2:
                raise
            manager.mark_unhealthy(slot.gpu_id, f"engine build failed: {exc}")
            logger.warning("engine build failed on %s (%s); retrying on another GPU", slot.label, exc,
                           extra={"connection_id": connection_id, "device": slot.label})
            slot = manager.acquire(connection_id, exclude=(slot.gpu_id,))
    raise AssertionError("unreachable")


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


async def _send_events(connection: _Connection, engine: TranscriptionEngine, events, translator: ListenTranslator) -> float:
    """Engine events → messages until `Final`; returns the audio duration."""
    async for event in events:
        if isinstance(event, Final):
            return event.audio_s
        for message in translator.on_event(event, engine.received_s):
            await connection.send(message)
    return engine.received_s


async def _tick_utterance_ends(connection: _Connection, engine: TranscriptionEngine, translator: ListenTranslator) -> None:
    while True:
        await asyncio.sleep(UTTERANCE_TICK_S)
        message = translator.utterance_end(engine.received_s)
        if message is not None:
            await connection.send(message)


async def _cancel(*tasks: asyncio.Task) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _stream(connection: _Connection, services: Services, engine: TranscriptionEngine, connection_id: str,
                  translator: ListenTranslator) -> str:
    """Run one admitted stream to its end; returns the outcome (a metric label). Raises typed errors."""
    settings = services.settings
    guard = SessionGuard(settings, lambda: engine.backlog_s, lambda: engine.received_s)
    finish_now = services.sessions.register(connection_id)
    events = engine.events()
    sender = asyncio.create_task(_send_events(connection, engine, events, translator))
    receiver = asyncio.create_task(_receive(connection.websocket, engine, settings.max_frame_bytes, guard, connection.log))
    watchdog = asyncio.create_task(guard.watch())
    shutdown = asyncio.create_task(finish_now.wait())
    ticker = asyncio.create_task(_tick_utterance_ends(connection, engine, translator))
    tasks = (sender, receiver, watchdog, shutdown, ticker)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done and receiver.exception() is None and receiver.result():
            done, _ = await asyncio.wait((sender, watchdog), return_when=asyncio.FIRST_COMPLETED)
            if watchdog in done:
                raise watchdog.exception()  # type: ignore[misc]
            audio_s = sender.result()
            await connection.send(translator.metadata(audio_s))
            await connection.close(NORMAL_END.code)
            return NORMAL_END.label
        for task in (receiver, sender, watchdog, ticker):
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if shutdown in done:
            connection.log.info("finishing the stream: the server is shutting down")
            await _cancel(receiver, watchdog)
            await engine.end_of_audio()
            audio_s = await sender
            await connection.send(translator.metadata(audio_s))
            await connection.close(FINISHED_AT_SHUTDOWN.code, FINISHED_AT_SHUTDOWN.reason)
            return FINISHED_AT_SHUTDOWN.label
        connection.log.info("client went away")
        return "client_gone"
    finally:
        await _cancel(*tasks)
        services.sessions.unregister(connection_id)


async def _end_with_error(connection: _Connection, exc: BaseException) -> str:
    """Deepgram's error message, then its close code; returns the outcome label."""
    ending = ending_for(exc)
    if ending.code == INTERNAL_ERROR.code and not isinstance(exc, WhisperLiveKitError):
        connection.log.error("failed with an unexpected error", exc_info=exc)
    else:
        connection.log.info("closing: %s", exc)
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
    connection = _Connection(websocket, log)
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
        speakers = _speaker_lookup(engine) if options.diarize else None
        translator = ListenTranslator(options, connection_id, settings.model, speakers)
        outcome = await _stream(connection, services, engine, connection_id, translator)
    except WebSocketDisconnect:
        outcome = "client_gone"
        log.info("client disconnected")
    except Exception as exc:  # typed errors and bugs alike: the table says how to close
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept()
        outcome = await _end_with_error(connection, exc)
    finally:
        services.addresses.remove(address)
        if engine is not None:
            services.active_engines.discard(engine)
            await engine.close()
            metrics.session_ended(engine, outcome)
            if settings.model_per_connection:
                await asyncio.to_thread(engine.worker.close)
        if slot is not None:
            services.manager.release(slot)
