"""Typed errors of the pipeline; `api/` maps each one to a close code or HTTP status."""


class WhisperLiveKitError(Exception):
    """Base class: every error here carries a message fit to show a user."""


class NoCapacity(WhisperLiveKitError):
    """No GPU (or CPU) slot is free right now."""


class ModelNotFound(WhisperLiveKitError):
    """A model name or path could not be resolved to weights on this machine."""


class ModelLoadError(WhisperLiveKitError):
    """Weights were found but could not be loaded (corrupt file, wrong format, device error)."""


class DecodeError(WhisperLiveKitError):
    """The client's audio could not be decoded."""


class ProtocolViolation(WhisperLiveKitError):
    """The client broke the wire protocol (text frame, oversized frame, ...)."""

    def __init__(self, message: str, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code


class DeviceError(WhisperLiveKitError):
    """Inference failed on a device (CUDA error, out of memory)."""


class LimitExceeded(ProtocolViolation):
    """A connection ran into a server limit (session length, idle time, backlog, per-address cap).

    `reason` is the WebSocket close reason; the message is what the client is told first.
    """

    def __init__(self, message: str, close_code: int, reason: str) -> None:
        super().__init__(message, close_code)
        self.reason = reason


class InvalidParameter(WhisperLiveKitError):
    """A request parameter (query string) has a value the server cannot use; the message says what is allowed."""
