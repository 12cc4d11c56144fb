"""`WS /v1/realtime?intent=transcription`: OpenAI's Realtime transcription sessions, as its own SDK
(`openai[realtime]`, `client.realtime.connect`) speaks them.

A thin adapter. The client configures its session (`session.update`, or the older
`transcription_session.update`) and then appends base64 PCM; the engine is built on the
connection's slot at the first `input_audio_buffer.append`, once the input rate and the language
are known, and from then on the shared stream loop (`stream_runner.run_stream`) runs it. Event
shapes are in `realtime_messages.py`. Admission, limits, drain, auth and metrics are `/asr`'s;
every error is an `error` event (`api/errors.py:realtime_error`): a bad event leaves the session
open, anything else closes it with the main table's close code.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Optional

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect

from whisperlivekit.api.admission import build_on_slot
from whisperlivekit.api.asr import _gatekeeper
from whisperlivekit.api.errors import FINISHED_AT_SHUTDOWN, Ending, realtime_error
from whisperlivekit.api.params import parse_language
from whisperlivekit.api.realtime_messages import (
    RealtimeTranslator, SessionConfig, apply_update, audio_of, error_event, new_id, parse_event, session_object,
)
from whisperlivekit.api.stream_runner import (
    CLIENT_GONE, Connection, StreamParts, count_refusal, log_failure, release, run_stream,
)
from whisperlivekit.audio.decode import InputFormat
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.errors import (
    BadEvent, BadParameters, FrameTooBig, IdleTimeout, NoCapacity, TooManyConnectionsFromAddress, WhisperLiveKitError,
)
from whisperlivekit.events import Final
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.limits import SessionGuard
from whisperlivekit.services import Services, get_ws_services

logger = logging.getLogger(__name__)
router = APIRouter()

PROTOCOL = "openai_realtime"  # the `protocol` label of `whisperlivekit_streams_total`
MIN_COMMIT_S = 0.1  # OpenAI refuses to commit less audio than this
OWED_POLL_S = 0.1


class _Session:
    """One connection's protocol state: the session's configuration, the translator, the audio
    appended since the last commit, and (after the first append) the engine."""

    def __init__(self, services: Services, connection: Connection) -> None:
        self.services = services
        self.connection = connection
        self.id = new_id("sess")
        self.config = SessionConfig()
        self.language = self._language(self.config)
        self.translator = RealtimeTranslator(self.config)
        self.engine: Optional[TranscriptionEngine] = None
        self.uncommitted_bytes = 0

    def _language(self, config: SessionConfig) -> Optional[str]:
        settings = self.services.settings
        return parse_language(config.language, settings.language, self.services.pool.languages(), settings.model)

    def created(self) -> dict:
        kind = "transcription_session.created" if self.config.legacy else "session.created"
        return {"type": kind, "event_id": new_id("event"), "session": session_object(self.config, self.id, self.language)}

    async def update(self, event: dict) -> None:
        """Apply a session update (raises BadEvent/BadParameters, leaving the session as it was)."""
        config = apply_update(self.config, event)
        language = self._language(config)
        if self.engine is not None and (config.rate_hz, language) != (self.config.rate_hz, self.language):
            raise BadParameters("The input format and language cannot change once audio was appended")
        self.config, self.language = config, language
        self.translator.config = config
        self.tune_vad()
        kind = "transcription_session.updated" if config.legacy else "session.updated"
        await self.connection.send({"type": kind, "event_id": new_id("event"),
                                    "session": session_object(config, self.id, language)})

    def tune_vad(self) -> None:
        """Server VAD's threshold and silence go to the engine's VAD (which never cuts sooner than its own)."""
        turn = self.config.turn_detection
        if self.engine is None or turn is None or self.engine.vad is None:
            return
        self.engine.vad.threshold = turn.threshold
        self.engine.lengthen_endpoint_silence(turn.silence_duration_ms / 1000)

    @property
    def input_format(self) -> InputFormat:
        return InputFormat(pcm=True, sample_rate_hz=self.config.rate_hz)

    async def commit(self, guard: Optional[SessionGuard]) -> None:
        if self.uncommitted_bytes < MIN_COMMIT_S * 2 * self.config.rate_hz:
            raise BadEvent(f"Cannot commit the input audio buffer: it holds less than {MIN_COMMIT_S * 1000:.0f} ms of audio")
        self.uncommitted_bytes = 0
        await self.connection.send(self.translator.commit())
        if self.engine is not None and guard is not None:
            with guard.feeding():  # the client waits for the server here
                await self.engine.finalize()

    async def clear(self, guard: Optional[SessionGuard]) -> None:
        self.uncommitted_bytes = 0
        self.translator.clear()
        if self.engine is not None and guard is not None:
            with guard.feeding():
                await self.engine.finalize()
        await self.connection.send({"type": "input_audio_buffer.cleared", "event_id": new_id("event")})


def _event_from(message: dict, max_frame_bytes: int) -> Optional[dict]:
    """A client frame as an event; None for a binary frame (refused, the session goes on)."""
    text = message.get("text")
    if text is None:
        data = message.get("bytes") or b""
        if len(data) > max_frame_bytes:
            raise FrameTooBig(f"Frame of {len(data)} bytes exceeds the {max_frame_bytes}-byte limit")
        raise BadEvent("Binary frames are not events: send audio as input_audio_buffer.append with base64 PCM")
    if len(text) > 2 * max_frame_bytes:  # base64 is 4/3 of the audio; JSON around it is small
        raise FrameTooBig(f"Event of {len(text)} characters exceeds the limit ({max_frame_bytes} bytes of audio)")
    return parse_event(text)


async def _tell(session: _Session, exc: WhisperLiveKitError, event: Optional[dict]) -> None:
    """A recoverable error: the error event, and the session goes on."""
    client_event_id = event.get("event_id") if isinstance(event, dict) else None
    session.connection.log.info("refused an event: %s", exc)
    await session.connection.send(error_event(realtime_error(exc, getattr(exc, "param", None), client_event_id)))


async def _configure(websocket: WebSocket, session: _Session, finish_now: asyncio.Event, idle_timeout_s: float) -> Optional[bytes]:
    """Session events until the first audio, which is returned (None: the client went away).
    Without audio for `idle_timeout_s` the connection ends, as a stream's would."""
    settings = session.services.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + idle_timeout_s if idle_timeout_s else None
    while True:
        receive = asyncio.ensure_future(websocket.receive())
        finish = asyncio.ensure_future(finish_now.wait())
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait((receive, finish), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finish.cancel()
        if receive not in done:
            receive.cancel()
            await asyncio.gather(receive, finish, return_exceptions=True)
            if finish_now.is_set():
                raise _Drained()
            raise IdleTimeout(f"No audio for {idle_timeout_s:g} s")
        message = receive.result()
        if message["type"] == "websocket.disconnect":
            return None
        event = None
        try:
            event = _event_from(message, settings.max_frame_bytes)
            kind = event["type"]
            if kind == "input_audio_buffer.append":
                return audio_of(event)
            if kind in ("session.update", "transcription_session.update"):
                await session.update(event)
            elif kind == "input_audio_buffer.commit":
                await session.commit(None)
            elif kind == "input_audio_buffer.clear":
                await session.clear(None)
        except (BadEvent, BadParameters) as exc:
            await _tell(session, exc, event)


class _Drained(Exception):
    """The server began draining before the session's first audio."""


def _parts(session: _Session, engine: TranscriptionEngine, first_audio: bytes) -> StreamParts:
    """`/v1/realtime`'s side of the shared stream loop: events in, events out."""
    connection = session.connection
    events = engine.events()  # before any audio is fed
    max_frame_bytes = session.services.settings.max_frame_bytes

    async def feed(audio: bytes, guard: SessionGuard) -> None:
        if len(audio) > max_frame_bytes:
            raise FrameTooBig(f"Audio of {len(audio)} bytes in one event exceeds the {max_frame_bytes}-byte limit")
        session.uncommitted_bytes += len(audio)
        with guard.feeding():
            await engine.feed(audio)

    async def receive(guard: SessionGuard) -> bool:
        """Client events → engine until the client goes away (the protocol has no end-of-audio event)."""
        await feed(first_audio, guard)
        while True:
            message = await connection.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return False
            event = None
            try:
                event = _event_from(message, max_frame_bytes)
                kind = event["type"]
                if kind == "input_audio_buffer.append":
                    await feed(audio_of(event), guard)
                elif kind == "input_audio_buffer.commit":
                    await session.commit(guard)
                elif kind == "input_audio_buffer.clear":
                    await session.clear(guard)
                else:
                    await session.update(event)
            except (BadEvent, BadParameters) as exc:
                await _tell(session, exc, event)

    async def send() -> None:
        async for event in events:
            if isinstance(event, Final):
                return
            for message in session.translator.on_event(event):
                await connection.send(message)

    async def owed_transcripts(guard: SessionGuard) -> None:
        """While committed turns wait for their transcript the client waits for the server: that
        time is not the client's silence (no idle or audio-rate limit for it), as during a commit."""
        while True:
            while not session.translator.closing:
                await asyncio.sleep(OWED_POLL_S)
            with guard.feeding():
                while session.translator.closing:
                    await asyncio.sleep(OWED_POLL_S)

    async def goodbye(_result: None, ending: Ending) -> None:
        await connection.close(ending.code, ending.reason)

    return StreamParts(receive=receive, send=send, goodbye=goodbye, extras=(owed_transcripts,))


async def _refuse(connection: Connection, services: Services, refusal: WhisperLiveKitError) -> None:
    """An `error` event, then the close the table says, for a connection that was never admitted."""
    ending = count_refusal(services, refusal, connection.log)
    await connection.send(error_event(realtime_error(refusal)))
    await connection.close(ending.code, ending.reason_for(refusal))


async def _end_with_error(connection: Connection, exc: BaseException) -> str:
    """The `error` event, then the table's close; returns the outcome label."""
    ending = log_failure(connection.log, exc)
    await connection.send(error_event(realtime_error(exc)))
    await connection.close(ending.code, ending.reason_for(exc))
    return ending.label_for(exc)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, services: Services = Depends(get_ws_services)) -> None:
    connection_id = str(uuid.uuid4())
    log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": "unassigned"})
    settings = services.settings
    metrics = services.metrics
    connection = Connection(websocket, log)
    await websocket.accept()  # OpenAI's clients read refusals as an `error` event after the upgrade
    address = websocket.client.host if websocket.client else "unknown"
    refusal = _gatekeeper(services, websocket, address)
    intent = websocket.query_params.get("intent")
    if refusal is None and intent not in (None, "", "transcription"):
        refusal = BadParameters(f"intent {intent[:40]!r} is not supported: this server serves intent=transcription")
    if refusal is not None:
        await _refuse(connection, services, refusal)
        return
    if not services.addresses.try_add(address):
        await _refuse(connection, services, TooManyConnectionsFromAddress("Too many connections from this address"))
        return
    slot: Optional[Slot] = None
    engine: Optional[TranscriptionEngine] = None
    outcome = "error"
    try:
        waited_from = time.monotonic()
        try:
            slot = await services.manager.acquire_waiting(connection_id, settings.queue_timeout_s)
        except NoCapacity as exc:
            await _refuse(connection, services, exc)
            return
        session = _Session(services, connection)
        await connection.send(session.created())
        finish_now = services.sessions.register(connection_id)  # drain also ends a session still configuring
        try:
            first_audio = await _configure(websocket, session, finish_now, settings.idle_timeout_s)
        except _Drained:
            await connection.close(FINISHED_AT_SHUTDOWN.code, FINISHED_AT_SHUTDOWN.reason)
            outcome = FINISHED_AT_SHUTDOWN.label
            return
        finally:
            services.sessions.unregister(connection_id)
        if first_audio is None:
            outcome = CLIENT_GONE
            return
        acquired, slot = slot, None  # `build_on_slot` releases it if the build fails
        slot, engine = await build_on_slot(services, acquired, session.language, session.input_format)
        session.engine = engine
        session.tune_vad()
        metrics.slot_wait.observe(time.monotonic() - waited_from)
        metrics.accepted.inc()
        metrics.streams.labels(PROTOCOL).inc()
        connection.log = log = logging.LoggerAdapter(logger, {"connection_id": connection_id, "device": slot.label})
        log.info("realtime transcription session: %s", session.config)
        services.active_engines.add(engine)
        outcome = await run_stream(services, engine, connection_id, log, _parts(session, engine, first_audio))
    except WebSocketDisconnect:
        outcome = CLIENT_GONE
        log.info("client disconnected")
    except Exception as exc:  # typed errors and bugs alike: the table says how to close
        outcome = await _end_with_error(connection, exc)
    finally:
        await release(services, address, engine, slot, outcome)
