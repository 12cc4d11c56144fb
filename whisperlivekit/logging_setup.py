"""Log set-up: readable text by default, one JSON object per line with `--log-format json`."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRETS = (
    re.compile(r"(?i)([?&]token=)[^&\s\"']+"),
    re.compile(r"(?i)(authorization:?\s*(?:bearer\s+)?)[^\s\"',]+"),
)


class RedactSecrets(logging.Filter):
    """Masks `?token=…` and `Authorization: Bearer …` in any record (e.g. debug logs of a handshake)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for pattern in _SECRETS:
            redacted = pattern.sub(r"\1[redacted]", redacted)
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
