"""`POST /v1/audio/transcriptions` and `GET /v1/models`, as OpenAI's API (a change of `base_url`).

check (token, drain) → read the form (capped at `--max-file-bytes`) → decode the whole file
(ffmpeg) → admit (a slot, as a live stream) → the device worker's file job (30 s windows,
`--file-beam-size`, low priority) → one of OpenAI's response formats, or server-sent events.
Errors come out in OpenAI's shape, with the status from `api/errors.py`'s one table.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from whisperlivekit.api import security
from whisperlivekit.api.errors import RETRY_AFTER_S, ending_for, openai_error
from whisperlivekit.api.openai_formats import diarized_json, srt, sse, text, usage, verbose_json, vtt
from whisperlivekit.api.params import parse_language
from whisperlivekit.asr.types import FileSegment, FileTranscribeRequest
from whisperlivekit.audio.file import decode_file
from whisperlivekit.diarization.assign import assign_speakers
from whisperlivekit.errors import (
    AuthThrottled, BadParameters, DecodeError, FileTooLarge, NoCapacity, ServerShuttingDown,
    TooManyConnectionsFromAddress, Unauthorized, WhisperLiveKitError,
)
from whisperlivekit.services import Services, get_services

logger = logging.getLogger(__name__)
router = APIRouter()

FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
GRANULARITIES = ("segment", "word")
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small fields around the file


@dataclass(frozen=True)
class Params:
    audio_bytes: bytes
    language: Optional[str]
    prompt: str
    temperature: Optional[float]  # None: Whisper's fallback schedule (OpenAI's temperature 0)
    response_format: str
    granularities: tuple
    stream: bool


class _Held:
    """What one request holds (its address's count, then a slot); `release()` gives both back once."""

    def __init__(self, services: Services, address: str) -> None:
        self.services, self.address = services, address
        self.counted = False
        self.slot = None
        self._lock = threading.Lock()  # a streamed response's BackgroundTask runs in a thread

    def count_address(self) -> None:
        if not self.services.addresses.try_add(self.address):
            raise TooManyConnectionsFromAddress("Too many connections from this address")
        self.counted = True

    def release(self) -> None:
        with self._lock:
            slot, counted, self.slot, self.counted = self.slot, self.counted, None, False
        if slot is not None:
            self.services.manager.release(slot)
        if counted:
            self.services.addresses.remove(self.address)


def _bad(param: str, message: str) -> BadParameters:
    error = BadParameters(message)
    error.param = param  # type: ignore[attr-defined]  # OpenAI names the offending field
    return error


def _error_response(exc: BaseException, log: Any) -> JSONResponse:
    status, body = openai_error(exc, getattr(exc, "param", None))
    headers: Dict[str, str] = {}
    if isinstance(exc, (NoCapacity, ServerShuttingDown)):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if isinstance(exc, Unauthorized) and not isinstance(exc, AuthThrottled):
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500 and not isinstance(exc, (NoCapacity, ServerShuttingDown)):
        log.error("file request failed", exc_info=exc)
        if not isinstance(exc, WhisperLiveKitError):
            body["error"]["message"] = "Server error: an internal error (see the server log)"
    else:
        log.info("refused: %s", exc)
    return JSONResponse(body, status_code=status, headers=headers)


def _check_access(services: Services, request: Request) -> None:
    address = request.client.host if request.client else "unknown"
    refusal = security.token_refusal(services.settings, services.auth_throttle, address, request.headers,
                                     request.query_params, wrong_token="Incorrect API key provided")
    if refusal is not None:
        raise refusal
    if services.draining:
        raise ServerShuttingDown("Server is shutting down")


async def _read_form(request: Request, max_file_bytes: int):
    """The multipart form, refused with `FileTooLarge` as soon as the body passes the limit
    (whether or not the client declared its length)."""
    cap = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise FileTooLarge(f"The file exceeds the {max_file_bytes}-byte limit of this server")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise FileTooLarge(f"The file exceeds the {max_file_bytes}-byte limit of this server")
    replayed = False

    async def receive() -> dict:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        return await Request(request.scope, receive).form()
    except Exception as exc:  # malformed multipart (starlette raises its own parse errors)
        raise _bad("file", f"Could not read the multipart form: {exc}") from exc


async def _parse(form, services: Services) -> Params:
    settings = services.settings
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise _bad("file", "A 'file' field with the audio is required (multipart/form-data)")
    data = await upload.read()
    if len(data) > settings.max_file_bytes:
        raise FileTooLarge(f"The file exceeds the {settings.max_file_bytes}-byte limit of this server")
    try:
        language = parse_language(form.get("language") or None, settings.language, services.pool.languages(), settings.model)
    except BadParameters as exc:
        raise _bad("language", str(exc)) from exc
    response_format = str(form.get("response_format") or "json")
    if response_format == "diarized_json" and not settings.diarization:
        raise _bad("response_format", "diarized_json needs a server run with --diarization; use verbose_json")
    if response_format not in FORMATS:
        raise _bad("response_format", f"response_format must be one of {', '.join(FORMATS)}")
    granularities = tuple(str(g) for g in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities"))
    if any(g not in GRANULARITIES for g in granularities):
        raise _bad("timestamp_granularities", "timestamp_granularities must be 'segment' and/or 'word'")
    try:
        temperature = float(form.get("temperature") or 0.0)
    except ValueError:
        raise _bad("temperature", "temperature must be a number between 0 and 1") from None
    if not 0.0 <= temperature <= 1.0:
        raise _bad("temperature", "temperature must be a number between 0 and 1")
    stream = str(form.get("stream") or "false").lower()
    if stream not in ("true", "false"):
        raise _bad("stream", "stream must be true or false")
    return Params(data, language, str(form.get("prompt") or ""), temperature or None, response_format, granularities,
                  stream == "true")


# -- the routes ------------------------------------------------------------------------


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, services: Services = Depends(get_services)) -> Response:
    request_id = f"file-{uuid.uuid4()}"
    log = logging.LoggerAdapter(logger, {"connection_id": request_id, "device": "unassigned"})
    settings, manager, metrics = services.settings, services.manager, services.metrics
    held = _Held(services, request.client.host if request.client else "unknown")
    try:
        _check_access(services, request)
        held.count_address()
        params = await _parse(await _read_form(request, settings.max_file_bytes), services)
        try:
            audio = await decode_file(params.audio_bytes)
        except DecodeError as exc:
            exc.param = "file"  # type: ignore[attr-defined]
            raise
        slot = held.slot = await manager.acquire_waiting(request_id, settings.queue_timeout_s)
        metrics.accepted.inc()
        log = logging.LoggerAdapter(logger, {"connection_id": request_id, "device": slot.label})
        worker = await services.pool.worker(slot.device)
        started = time.monotonic()
        info, segments = await worker.file_segments(FileTranscribeRequest(
            audio, language=params.language, prompt=params.prompt, temperature=params.temperature,
            beam_size=settings.file_beam_size, task=settings.task,
            word_timestamps="word" in params.granularities or params.response_format == "diarized_json",
        ))
    except Exception as exc:  # typed errors and bugs alike: the table says the status
        held.release()
        if isinstance(exc, WhisperLiveKitError):
            metrics.refused.labels(ending_for(exc).label_for(exc)).inc()
        return _error_response(exc, log)
    log.info("transcribing a %.1f s file (%s)", info.duration_s, params.response_format)

    if params.stream and params.response_format != "diarized_json":
        return StreamingResponse(_events(services, held, segments, info.duration_s, log), media_type="text/event-stream",
                                 background=BackgroundTask(held.release))
    try:
        collected: List[FileSegment] = []
        async for segment in segments:
            collected.append(segment)
            if await request.is_disconnected():  # nobody will read the answer: free the slot now
                await segments.aclose()
                metrics.closed.labels("client_gone").inc()
                log.info("client left after %d segment(s): transcription stopped", len(collected))
                return Response(status_code=204)
        if params.response_format == "diarized_json":
            speaker_segments = await worker.diarize_file(audio)
            speakers = assign_speakers([w for s in collected for w in s.words], speaker_segments)
    except Exception as exc:
        metrics.closed.labels("error").inc()
        return _error_response(exc, log)
    finally:
        held.release()
    metrics.closed.labels("completed").inc()
    log.info("transcribed %.1f s in %.1f s", info.duration_s, time.monotonic() - started)
    if params.response_format == "text":
        return PlainTextResponse(text(collected) + "\n")
    if params.response_format == "srt":
        return PlainTextResponse(srt(collected))
    if params.response_format == "vtt":
        return PlainTextResponse(vtt(collected), media_type="text/vtt")
    if params.response_format == "diarized_json":
        return JSONResponse(diarized_json(info.duration_s, collected, speakers))
    if params.response_format == "verbose_json":
        return JSONResponse(verbose_json(params.granularities, info.language, info.duration_s, collected))
    return JSONResponse({"text": text(collected), "usage": usage(info.duration_s)})


async def _events(services: Services, held: _Held, segments: AsyncIterator[FileSegment], duration_s: float, log) -> AsyncIterator[bytes]:
    """`transcript.text.delta` per decoded segment, then `transcript.text.done`; an error as an `error` event."""
    texts: List[str] = []
    try:
        async for segment in segments:
            delta = segment.text if texts else segment.text.lstrip()
            texts.append(delta)
            yield sse({"type": "transcript.text.delta", "delta": delta})
        yield sse({"type": "transcript.text.done", "text": "".join(texts).strip(), "usage": usage(duration_s)})
        services.metrics.closed.labels("completed").inc()
    except (asyncio.CancelledError, GeneratorExit):
        services.metrics.closed.labels("client_gone").inc()
        log.info("client left after %d segment(s): transcription stopped", len(texts))
        raise
    except Exception as exc:  # the status line is sent: the SDK raises on an `error` event
        services.metrics.closed.labels("error").inc()
        log.error("file stream failed", exc_info=exc)
        yield sse(openai_error(exc)[1])
    finally:
        held.release()


def _model(services: Services) -> dict:
    return {"id": services.settings.model, "object": "model", "created": int(services.started_at), "owned_by": "whisperlivekit"}


@router.get("/v1/models")
async def models(request: Request, services: Services = Depends(get_services)) -> Response:
    """The one model this server runs; any `model` a request names is answered by it."""
    try:
        _check_access(services, request)
    except WhisperLiveKitError as exc:
        return _error_response(exc, logger)
    return JSONResponse({"object": "list", "data": [_model(services)]})


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request, services: Services = Depends(get_services)) -> Response:
    """The server's model under its own name; 404 in OpenAI's shape for any other."""
    try:
        _check_access(services, request)
    except WhisperLiveKitError as exc:
        return _error_response(exc, logger)
    if model_id != services.settings.model:
        error = {"message": f"The model {model_id!r} does not exist; this server runs {services.settings.model!r}",
                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
        return JSONResponse({"error": error}, status_code=404)
    return JSONResponse(_model(services))


__all__ = ["router"]
