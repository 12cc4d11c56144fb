"""Log set-up: readable text by default, one JSON object per line with `--log-format json`."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from urllib.parse import unquote_plus

_AUTHORIZATION = re.compile(r"(?i)(authorization:?\s*(?:bearer\s+)?)[^\s\"',]+")
# one query parameter: its (possibly percent-encoded) name, then its value
_QUERY_PARAMETER = re.compile(r"([?&;])([^=&;\s\"'?#]*)=([^&;\s\"'#]*)")
_SECRET_NAMES = frozenset({"token", "access_token", "api_token", "api_key"})
# uvicorn's connection lines: `"WebSocket /asr?…" [accepted]`, `"GET /metrics?… HTTP/1.1" 200`
_UVICORN_PATH_QUERY = re.compile(r"(\"(?:WebSocket|[A-Z]+) [^\s?\"]*)\?[^\s\"]*")


def _mask_parameter(match: "re.Match[str]") -> str:
    separator, name, value = match.groups()
    if unquote_plus(name).strip().lower() in _SECRET_NAMES:  # `%74oken` is `token` to the server too
        return f"{separator}{name}=[redacted]"
    return match.group(0)


def redact(message: str) -> str:
    """`message` with secret query parameters (matched on their decoded names) and bearer tokens masked."""
    return _AUTHORIZATION.sub(r"\1[redacted]", _QUERY_PARAMETER.sub(_mask_parameter, message))


class RedactSecrets(logging.Filter):
    """Masks tokens in any record (e.g. debug logs of a handshake); uvicorn's own lines lose their
    query strings entirely: the path is enough to read a log, and a query may carry credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if record.name.startswith("uvicorn"):
            redacted = _UVICORN_PATH_QUERY.sub(r"\1?[query omitted]", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("connection_id", "device"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = [str(getattr(record, k)) for k in ("connection_id", "device") if hasattr(record, k)]
        return f"{line} [{' '.join(tags)}]" if tags else line


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())  # tokens never reach the log, whatever the level
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(max(logging.WARNING, root.level))
