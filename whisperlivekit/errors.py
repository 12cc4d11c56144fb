"""Typed errors of the pipeline. They say *what* went wrong; `api/errors.py` alone decides what a
client is told (close code, reason, HTTP status, whether to retry), so no error here carries a code.

`device_faults()` is how the backends and diarizers turn a library's device failure (CUDA,
cuBLAS, cuDNN, out of memory) into a `DeviceError` where they call the library, so nothing
downstream has to guess from a message whether a GPU is at fault.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class WhisperLiveKitError(Exception):
    """Base class: every error here carries a message fit to show a user."""


class NoCapacity(WhisperLiveKitError):
    """No GPU (or CPU) slot is free right now."""


class ModelNotFound(WhisperLiveKitError):
    """A model name or path could not be resolved to weights on this machine."""


class ModelLoadError(WhisperLiveKitError):
    """Weights were found but could not be loaded (corrupt file, wrong format, missing package)."""


class DecodeError(WhisperLiveKitError):
    """The client's audio could not be decoded."""


class DeviceError(WhisperLiveKitError):
    """The device failed (CUDA error, out of device memory): the GPU, not the request, is at fault."""


class NotSupported(WhisperLiveKitError):
    """The request asks for something this server (its backend, its flags) does not do."""


class ServerShuttingDown(WhisperLiveKitError):
    """The server is draining before it exits: it admits no new connection."""


# -- the client broke the rules ------------------------------------------------------------


class ProtocolViolation(WhisperLiveKitError):
    """The client broke the wire protocol."""


class TextFrame(ProtocolViolation):
    """A text frame where only binary audio frames are allowed."""


class FrameTooBig(ProtocolViolation):
    """A frame over `--max-frame-bytes`."""


class BadParameters(ProtocolViolation):
    """A query parameter (e.g. `language`) the server cannot use."""


class BadEvent(ProtocolViolation):
    """A client event (OpenAI Realtime) the server cannot use: not JSON, an unknown type, a bad
    field. The session goes on: only that event is refused."""

    def __init__(self, message: str, param: "str | None" = None) -> None:
        super().__init__(message)
        self.param = param  # the offending field, as the client named it (`session.audio.input.format`)


class Unauthorized(ProtocolViolation):
    """`--api-token` is set and the client presented no token, or a wrong one."""


class AuthThrottled(Unauthorized):
    """Too many wrong tokens from this address lately: refused without comparing."""


class OriginNotAllowed(ProtocolViolation):
    """`--allowed-origins` is set and the WebSocket's `Origin` is not in it."""


class LimitExceeded(ProtocolViolation):
    """A connection ran into a server limit; the message is what the client is told first."""


class SessionTooLong(LimitExceeded):
    """`--max-session-seconds` reached."""


class IdleTimeout(LimitExceeded):
    """No audio frame for `--idle-timeout` seconds."""


class BacklogTooLarge(LimitExceeded):
    """More than `--max-backlog-seconds` of received audio wait to be transcribed: a client faster than real time."""


class TooLittleAudio(LimitExceeded):
    """After `--start-grace`, less than `--min-audio-rate` seconds of decoded audio per second: a slot hog."""


class FileTooLarge(LimitExceeded):
    """An uploaded file over `--max-file-bytes`."""


class TooManyConnectionsFromAddress(LimitExceeded):
    """`--max-connections-per-ip` concurrent connections from this address already."""


# -- device faults, typed at the library boundary --------------------------------------------

# CTranslate2 reports every failure as a plain RuntimeError; these are the words of its CUDA
# paths ("CUDA failed with error out of memory", "cuBLAS failed with status ...", "cuDNN failed
# with status ...") and of torch's ("CUDA error: ...", "CUDA out of memory", "device-side assert").
_DEVICE_FAULT_WORDS = ("cuda", "cublas", "cudnn", "out of memory", "device-side")


def is_device_fault(exc: BaseException) -> bool:
    """Whether a library exception reports a device failure. Used only inside `device_faults`."""
    if isinstance(exc, DeviceError):
        return True
    torch = sys.modules.get("torch")  # only if a backend already imported it
    if torch is not None:
        typed = tuple(t for t in (getattr(torch.cuda, "OutOfMemoryError", None), getattr(torch, "AcceleratorError", None)) if t)
        if typed and isinstance(exc, typed):
            return True
    if not isinstance(exc, RuntimeError) or isinstance(exc, WhisperLiveKitError):
        return False
    text = str(exc).lower()
    return any(word in text for word in _DEVICE_FAULT_WORDS)


@contextmanager
def device_faults(device: str, doing: str) -> Iterator[None]:
    """Re-raise a device failure inside the block as `DeviceError("<doing> failed on <device>: …")`;
    any other exception passes through unchanged (a bug stays a bug)."""
    try:
        yield
    except DeviceError:
        raise
    except Exception as exc:
        if is_device_fault(exc):
            raise DeviceError(f"{doing} failed on {device}: {exc}") from exc
        raise
