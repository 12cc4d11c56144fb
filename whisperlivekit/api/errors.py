"""The one table of how a connection ends: typed error (or deliberate close) → WebSocket close
code and reason, HTTP status, whether a client should reconnect on its own, and the metric label.

Close codes follow PROTOCOL.md and docs/protocol-additions.md. No other module names a close
code: `api/asr.py` asks `ending_for(exc)`, and the web page reads the same table from
`GET /close-codes.json` (`page_table()`), so the server and the browser cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Type

from whisperlivekit import errors


@dataclass(frozen=True)
class Ending:
    """How one kind of ending looks to a client."""

    code: int  # WebSocket close code
    reason: str  # close reason; "" means the error's own message
    http_status: int
    retry: bool  # whether reconnecting by itself could help the client
    label: str  # `connections_refused_total{reason}` or `connections_closed_total{outcome}`; "" means the message
    hint: str = ""  # the page adds this after the reason (e.g. what to do about "No GPU available")

    def reason_for(self, exc: Optional[BaseException] = None) -> str:
        return self.reason or (str(exc) if exc is not None else "")

    def label_for(self, exc: Optional[BaseException] = None) -> str:
        return self.label or (str(exc) if exc is not None else "")


NORMAL_END = Ending(1000, "", 200, False, "completed")
FINISHED_AT_SHUTDOWN = Ending(1001, "Server is shutting down", 503, True, "shutdown")
INTERNAL_ERROR = Ending(1011, "Internal server error", 500, True, "error")  # a bug: anything untyped

ENDINGS: Dict[Type[errors.WhisperLiveKitError], Ending] = {
    errors.NoCapacity: Ending(1008, "", 503, False, "", hint="All transcription slots are busy; try again in a moment."),
    errors.ServerShuttingDown: Ending(1001, "Server is shutting down", 503, True, "draining"),
    errors.ModelNotFound: Ending(1011, "Model not available", 500, True, "model_error"),
    errors.ModelLoadError: Ending(1011, "Inference failed", 500, True, "model_error"),
    errors.DeviceError: Ending(1011, "Inference failed", 500, True, "device_error"),
    errors.DecodeError: Ending(1007, "Could not decode audio", 400, False, "decode_error"),
    errors.TextFrame: Ending(1003, "", 400, False, "protocol_error"),
    errors.FrameTooBig: Ending(1009, "", 413, False, "protocol_error"),
    errors.BadParameters: Ending(4400, "Bad parameters", 400, False, "bad_parameters"),
    errors.Unauthorized: Ending(4401, "Unauthorized", 401, False, "unauthorized"),
    errors.AuthThrottled: Ending(4401, "Too many failed attempts: try again later", 429, False, "auth_throttled"),
    errors.OriginNotAllowed: Ending(4403, "Origin not allowed", 403, False, "origin"),
    errors.SessionTooLong: Ending(1008, "Maximum session length reached", 429, False, "limit"),
    errors.IdleTimeout: Ending(1001, "Idle timeout", 408, True, "limit"),
    errors.BacklogTooLarge: Ending(1008, "Client sends faster than real time", 429, False, "limit"),
    errors.TooLittleAudio: Ending(1008, "Too little audio", 408, False, "limit"),
    errors.FileTooLarge: Ending(1009, "", 413, False, "file_too_large"),
    errors.NotSupported: Ending(1003, "", 501, False, "not_supported"),
    errors.TooManyConnectionsFromAddress: Ending(1008, "Too many connections from this address", 429, False, "per_address"),
    errors.BadEvent: Ending(1003, "", 400, False, "protocol_error"),  # OpenAI Realtime: an error event, the session goes on
}


@dataclass(frozen=True)
class DeepgramEnding:
    """How an ending looks on Deepgram's `/v1/listen`: the close code and the error code its
    clients read (`{"type": "Error", "code": …}` in a stream; `err_code` in a refused handshake's
    JSON body, whose HTTP status is the main table's)."""

    close_code: int
    err_code: str


# Deepgram closes a stream with 1008 for bad data and 1011 for everything on its side
# (DATA-0000 / NET-0000 / NET-0001); refusals before the handshake use HTTP errors instead.
DEEPGRAM_ENDINGS: Dict[Type[errors.WhisperLiveKitError], DeepgramEnding] = {
    errors.NoCapacity: DeepgramEnding(1008, "TOO_MANY_REQUESTS"),
    errors.ServerShuttingDown: DeepgramEnding(1011, "NET-0001"),
    errors.ModelNotFound: DeepgramEnding(1011, "NET-0001"),
    errors.ModelLoadError: DeepgramEnding(1011, "NET-0001"),
    errors.DeviceError: DeepgramEnding(1011, "NET-0001"),
    errors.DecodeError: DeepgramEnding(1008, "DATA-0000"),
    errors.TextFrame: DeepgramEnding(1008, "DATA-0000"),
    errors.FrameTooBig: DeepgramEnding(1009, "DATA-0000"),
    errors.BadParameters: DeepgramEnding(1008, "Bad Request"),
    errors.Unauthorized: DeepgramEnding(1008, "INVALID_AUTH"),
    errors.AuthThrottled: DeepgramEnding(1008, "TOO_MANY_REQUESTS"),
    errors.OriginNotAllowed: DeepgramEnding(1008, "INSUFFICIENT_PERMISSIONS"),
    errors.SessionTooLong: DeepgramEnding(1008, "LIMIT"),
    errors.IdleTimeout: DeepgramEnding(1011, "NET-0000"),
    errors.BacklogTooLarge: DeepgramEnding(1008, "LIMIT"),
    errors.TooLittleAudio: DeepgramEnding(1011, "NET-0000"),
    errors.TooManyConnectionsFromAddress: DeepgramEnding(1008, "TOO_MANY_REQUESTS"),
    errors.FileTooLarge: DeepgramEnding(1009, "DATA-0000"),  # batch uploads only; listed so every error has a row
    errors.NotSupported: DeepgramEnding(1011, "NET-0001"),
    errors.BadEvent: DeepgramEnding(1008, "DATA-0000"),  # /v1/realtime only; listed so every error has a row
}
DEEPGRAM_INTERNAL = DeepgramEnding(1011, "NET-0001")


def deepgram_ending_for(exc: BaseException) -> DeepgramEnding:
    """The Deepgram row for `exc` (its nearest typed ancestor); anything untyped is NET-0001."""
    for kind in type(exc).__mro__:
        if kind in DEEPGRAM_ENDINGS:
            return DEEPGRAM_ENDINGS[kind]
    return DEEPGRAM_INTERNAL


def ending_for(exc: BaseException) -> Ending:
    """The table's row for `exc` (its nearest typed ancestor); anything untyped is an internal error."""
    for kind in type(exc).__mro__:
        if kind in ENDINGS:
            return ENDINGS[kind]
    return INTERNAL_ERROR


# OpenAI's error `type` per HTTP status, for the OpenAI-compatible HTTP routes (`api/openai_batch.py`).
OPENAI_ERROR_TYPES: Dict[int, str] = {
    400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
    408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 501: "invalid_request_error", 503: "server_error",
}
OPENAI_ERROR_CODES: Dict[int, str] = {401: "invalid_api_key", 413: "file_too_large", 503: "server_overloaded"}
RETRY_AFTER_S = 2  # told to an HTTP client refused for capacity (a slot frees when a stream or file ends)


def openai_error(exc: BaseException, param: Optional[str] = None) -> "tuple[int, dict]":
    """The HTTP status and OpenAI-shaped body (`{"error": {message, type, param, code}}`) for `exc`."""
    ending = ending_for(exc)
    status = ending.http_status
    message = str(exc) if isinstance(exc, errors.WhisperLiveKitError) else ending.reason
    body = {"error": {
        "message": message, "type": OPENAI_ERROR_TYPES.get(status, "server_error"), "param": param,
        "code": OPENAI_ERROR_CODES.get(status, ending.label_for(exc) if ending.label else None),
    }}
    return status, body


# OpenAI Realtime (`/v1/realtime`): the `error.code` of its `error` event; `error.type` comes from the
# main table's HTTP status (OPENAI_ERROR_TYPES). The adapter keeps the session after `BadEvent` and
# after `BadParameters` in a `session.update`; after anything else it closes with the main table's code.
REALTIME_ERROR_CODES: Dict[Type[errors.WhisperLiveKitError], str] = {
    errors.NoCapacity: "server_overloaded",
    errors.ServerShuttingDown: "server_shutting_down",
    errors.ModelNotFound: "model_not_found",
    errors.ModelLoadError: "server_error",
    errors.DeviceError: "server_error",
    errors.DecodeError: "invalid_audio",
    errors.TextFrame: "invalid_event",
    errors.FrameTooBig: "message_too_large",
    errors.BadParameters: "invalid_value",
    errors.Unauthorized: "invalid_api_key",
    errors.AuthThrottled: "rate_limit_exceeded",
    errors.OriginNotAllowed: "origin_not_allowed",
    errors.SessionTooLong: "session_expired",
    errors.IdleTimeout: "idle_timeout",
    errors.BacklogTooLarge: "audio_faster_than_real_time",
    errors.TooLittleAudio: "too_little_audio",
    errors.FileTooLarge: "file_too_large",
    errors.NotSupported: "unsupported",
    errors.TooManyConnectionsFromAddress: "rate_limit_exceeded",
    errors.BadEvent: "invalid_event",
}


def realtime_error(exc: BaseException, param: Optional[str] = None, event_id: Optional[str] = None) -> dict:
    """The `error` object of an OpenAI Realtime `error` event for `exc`; a bug's details stay in the log."""
    code = next((REALTIME_ERROR_CODES[kind] for kind in type(exc).__mro__ if kind in REALTIME_ERROR_CODES), "server_error")
    status = ending_for(exc).http_status
    message = str(exc) if isinstance(exc, errors.WhisperLiveKitError) else "internal error (see the server log)"
    return {"type": OPENAI_ERROR_TYPES.get(status, "server_error"), "code": code, "message": message,
            "param": param, "event_id": event_id}


def is_device_fault(exc: BaseException) -> bool:
    """Whether a failed engine build says the device is at fault (so the GPU leaves rotation)."""
    return isinstance(exc, errors.DeviceError) or (
        isinstance(exc, errors.ModelLoadError) and isinstance(exc.__cause__, errors.DeviceError)
    )


# What the page tells its user, per close code: "{reason}" is the close reason (or the row's
# `default_reason`), "{: reason}" is ": <reason>" when there is one, "{code}" the code.
PAGE_MESSAGES: Dict[int, str] = {
    1000: "Connection closed by the server.",
    1001: "Connection lost{: reason} (code {code}).",
    1003: "The server could not use the audio{: reason}.",
    1007: "The server could not use the audio{: reason}.",
    1008: "The server refused the connection: {reason}.",
    1009: "The server could not use the audio{: reason}.",
    1011: "Server error{: reason}.",
    4400: "The server rejected the connection parameters{: reason}.",
    4401: "Access denied: the server needs a valid token (open this page with ?token=…).",
    4403: "The server does not accept connections from this page's address{: reason}.",
}
PAGE_DEFAULT_REASONS: Dict[int, str] = {1008: "No GPU available"}  # older servers closed 1008 without a reason
PAGE_UNKNOWN = {"retry": True, "message": "Connection lost{: reason} (code {code})."}  # e.g. 1006: the network dropped


def all_endings() -> Dict[str, Ending]:
    """Every row, named (error class name, or the deliberate close's name)."""
    named = {kind.__name__: ending for kind, ending in ENDINGS.items()}
    named.update(NORMAL_END=NORMAL_END, FINISHED_AT_SHUTDOWN=FINISHED_AT_SHUTDOWN, INTERNAL_ERROR=INTERNAL_ERROR)
    return named


def page_table() -> dict:
    """The table as the page reads it (`GET /close-codes.json`): per code, retry or not, the message
    template, and hints keyed by close reason; `default` covers codes the server never sends."""
    codes: Dict[str, dict] = {}
    for ending in all_endings().values():
        entry = codes.setdefault(str(ending.code), {"retry": ending.retry, "message": PAGE_MESSAGES[ending.code], "hints": {}})
        if entry["retry"] != ending.retry:
            raise ValueError(f"close code {ending.code} is retryable for one ending and not for another")
        if ending.hint:
            entry["hints"][ending.reason or PAGE_DEFAULT_REASONS[ending.code]] = ending.hint
        if ending.code in PAGE_DEFAULT_REASONS:
            entry["default_reason"] = PAGE_DEFAULT_REASONS[ending.code]
    return {"codes": codes, "default": PAGE_UNKNOWN}
