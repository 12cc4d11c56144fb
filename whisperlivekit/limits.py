"""Per-connection and per-address limits, each ending a connection with a typed error (`api/errors.py` picks its close code).

- `AddressCounter`: at most `--max-connections-per-ip` concurrent /asr connections per client address.
- `SessionGuard`: watches one connection for `--max-session-seconds`, `--idle-timeout` (no audio
  frame) and `--max-backlog-seconds` (received audio not yet transcribed: a client sending
  faster than real time), raising a `LimitExceeded` subclass instead of letting memory grow.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Callable, Optional

from whisperlivekit.config import Settings
from whisperlivekit.errors import BacklogTooLarge, IdleTimeout, LimitExceeded, SessionTooLong

CHECK_INTERVAL_S = 0.25


class AddressCounter:
    """Concurrent connections per client address; thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def try_add(self, address: str) -> bool:
        with self._lock:
            if self.limit and self._counts[address] >= self.limit:
                return False
            self._counts[address] += 1
            return True

    def remove(self, address: str) -> None:
        with self._lock:
            self._counts[address] -= 1
            if self._counts[address] <= 0:
                del self._counts[address]

    def count(self, address: str) -> int:
        with self._lock:
            return self._counts[address]


class SessionGuard:
    """Limits of one connection. The receiver calls `frame_received()`; `watch()` raises when a limit is hit."""

    def __init__(self, settings: Settings, backlog_s: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self.max_session_s = settings.max_session_s
        self.idle_timeout_s = settings.idle_timeout_s
        self.max_backlog_s = settings.max_backlog_s
        self._backlog_s = backlog_s
        self._clock = clock
        self.started_at = clock()
        self.last_frame_at = self.started_at
        self.input_ended = False

    def frame_received(self) -> None:
        self.last_frame_at = self._clock()

    def check(self) -> Optional[LimitExceeded]:
        now = self._clock()
        if self.max_session_s and now - self.started_at >= self.max_session_s:
            return SessionTooLong(f"Sessions last at most {self.max_session_s:g} s")
        if self.input_ended:  # the client is done sending: only the session cap still applies
            return None
        if self.idle_timeout_s and now - self.last_frame_at >= self.idle_timeout_s:
            return IdleTimeout(f"No audio for {self.idle_timeout_s:g} s")
        backlog = self._backlog_s()
        if self.max_backlog_s and backlog > self.max_backlog_s:
            return BacklogTooLarge(
                f"{backlog:.1f} s of audio are waiting to be transcribed (limit {self.max_backlog_s:g} s): "
                "send audio at real time")
        return None

    async def watch(self) -> None:
        """Returns never; raises `LimitExceeded` when a limit is hit."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            exceeded = self.check()
            if exceeded is not None:
                raise exceeded
