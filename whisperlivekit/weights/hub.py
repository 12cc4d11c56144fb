"""The Hugging Face hub, as Whisper weights and the Sortformer diarizer both see it: one probe.

Behind a firewall a hub download hangs for minutes, so before one we ask the hub for
the repository's metadata and wait at most a few seconds. A real answer is asked for,
not a TCP connection: proxies and captive networks accept connections to any address.

The hub's own environment variables (`HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_HUB_CACHE`,
`HF_HOME`) belong to `huggingface_hub`; they are read here, when called, the way that
library reads them, so the probe agrees with the download that follows it.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import List

TIMEOUT_S = 3.0


def offline() -> bool:
    """`HF_HUB_OFFLINE` is set: no request to the hub at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def cache_dir() -> Path:
    """The hub's download cache (`models--<owner>--<name>/snapshots/...` live here)."""
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub")


def hub_has(repo: str, timeout_s: float = TIMEOUT_S) -> bool:
    """Whether the hub answers for `repo` within `timeout_s`, name lookup included (it can hang too:
    the request runs in a thread that is abandoned at the deadline). Offline: False at once."""
    if offline():
        return False
    answered: List[bool] = []
    url = f"{endpoint()}/api/models/{repo}"

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                answered.append(response.status == 200 and "id" in json.loads(response.read(1_000_000)))
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(timeout_s)
    return bool(answered and answered[0])
