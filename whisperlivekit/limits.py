"""Per-connection and per-address limits, each ending a connection with a typed error (`api/errors.py` picks its close code).

- `AddressCounter`: at most `--max-connections-per-ip` concurrent /asr connections per client address.
- `SessionGuard`: watches one connection for `--max-session-seconds`, `--idle-timeout` (no audio),
  `--min-audio-rate` after `--start-grace` (a slot is for a live stream: a client that sends
  nothing, or trickles a few bytes to look alive, gives its slot back) and `--max-backlog-seconds`
  (received audio not yet transcribed: a client sending faster than real time), raising
  a `LimitExceeded` subclass (`api/errors.py` picks its close code) instead of letting memory grow or a slot be held.

Audio is counted in seconds, never as frames: a frame of two bytes, or a WebM header that decodes to
nothing, keeps no connection alive. `SentAudioMeter` turns what the client sent into seconds: the
audio decoded so far, plus the bytes the decoder has not caught up with at the rate this stream
has shown, or a low-bitrate floor (a starved ffmpeg or a busy VAD lane is the server's delay, not the client's). Time the
server itself spends accepting a frame (the decoder pushing back on a client that sends faster than
real time), and time its event loop was too busy to look, are not held against the client either.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from typing import Callable, Deque, Iterator, Optional, Tuple

from whisperlivekit.config import Settings
from whisperlivekit.errors import BacklogTooLarge, IdleTimeout, LimitExceeded, SessionTooLong, TooLittleAudio

CHECK_INTERVAL_S = 0.25
# Bytes the decoder has not turned into audio yet count at most this far ahead of the decoded audio:
# a server can be this far behind on an honest stream, and bytes that never decode stop counting.
UNDECODED_CREDIT_S = 30.0
# Container bytes not decoded yet count at least this many seconds each: Opus at 16 kbit/s, below what
# browsers send (32-128 kbit/s), so an honest client is never under-counted; a higher rate shown by
# the decoder wins. (Measured from the decoder alone, the rate came out far too low when ffmpeg had
# lagged from the start: a starved server still closed honest WebM clients in the full suite.)
CONTAINER_MIN_SECONDS_PER_BYTE = 1.0 / 2000
# Lateness of the guard's own wake-up beyond this is time the event loop could not read the client.
LATE_TOLERANCE_S = 0.05


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


class SentAudioMeter:
    """Seconds of audio one client has sent, as far as the server can tell before decoding it.

    Why not the decoded audio alone: on a loaded server ffmpeg (or the VAD lane that each decoded
    chunk waits for) can fall seconds behind a client that streams at real time, and the audio-rate
    rule then closed honest clients ("1.9 s of audio in the last 10 s", measured under CPU
    starvation). Why not bytes alone: bytes that never decode (a header, junk) are no stream.
    So undecoded bytes count at this stream's own rate: exact for raw PCM; for a container, the
    higher of a low-bitrate floor and the seconds-per-byte its decoder has shown, once it has decoded
    any audio at all. Either way at most `UNDECODED_CREDIT_S` ahead of the decoded audio: that cap,
    not the rate, is what keeps bytes that never decode from holding a slot.
    """

    def __init__(self, pcm_bytes_per_s: Optional[int] = None) -> None:
        self.fed_bytes = 0
        self.decoded_s = 0.0
        self._pcm = bool(pcm_bytes_per_s)
        self._seconds_per_byte = 1.0 / pcm_bytes_per_s if pcm_bytes_per_s else CONTAINER_MIN_SECONDS_PER_BYTE

    def fed(self, n_bytes: int) -> None:
        self.fed_bytes += n_bytes

    def decoded(self, seconds: float) -> None:
        self.decoded_s += seconds
        if not self._pcm and self.fed_bytes:
            self._seconds_per_byte = max(self._seconds_per_byte, self.decoded_s / self.fed_bytes)

    @property
    def sent_s(self) -> float:
        if not self._pcm and self.decoded_s <= 0.0:
            return 0.0  # a container that has decoded to nothing yet (a header, junk) is no stream yet
        undecoded_s = self.fed_bytes * self._seconds_per_byte - self.decoded_s
        return self.decoded_s + min(max(0.0, undecoded_s), UNDECODED_CREDIT_S)


class SessionGuard:
    """Limits of one connection; `watch()` raises when one is hit.

    `audio_s()` is the audio the client has sent so far (seconds; `SentAudioMeter.sent_s`),
    `backlog_s()` the received audio not yet transcribed. The receiver feeds each frame inside
    `feeding()` and sets `input_ended` after the client's end frame.
    """

    def __init__(self, settings: Settings, backlog_s: Callable[[], float], audio_s: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_session_s = settings.max_session_s
        self.idle_timeout_s = settings.idle_timeout_s
        self.max_backlog_s = settings.max_backlog_s
        self.min_audio_rate = settings.min_audio_rate
        self.start_grace_s = settings.start_grace_s
        self._backlog_s = backlog_s
        self._audio_s = audio_s
        self._clock = clock
        self.started_at = clock()
        self.last_audio_at = self.started_at
        self._last_audio_s = 0.0
        self._feeding_since: Optional[float] = None
        self._feeding_depth = 0
        self._fed_s = 0.0  # time inside `feeding()` or the event loop was late: the server was the holdup
        # (time, audio seconds, time the server was the holdup) samples reaching back one grace period: the audio-rate window
        self._history: Deque[Tuple[float, float, float]] = deque([(self.started_at, 0.0, 0.0)])
        self.input_ended = False

    @contextmanager
    def feeding(self) -> Iterator[None]:
        """Wraps handing one frame to the engine, which may wait for the decoder, or any other
        time the client waits for the server (e.g. for a transcript it is owed). May nest or
        overlap (two tasks of one connection); the time counts once."""
        if self._feeding_depth == 0:
            self._feeding_since = self._clock()
        self._feeding_depth += 1
        try:
            yield
        finally:
            self._feeding_depth -= 1
            if self._feeding_depth == 0:
                self._fed_s += self._clock() - self._feeding_since
                self._feeding_since = None

    def _server_busy_s(self, now: float) -> float:
        return self._fed_s + (now - self._feeding_since if self._feeding_since is not None else 0.0)

    def server_was_busy(self, seconds: float) -> None:
        """Time the server could not attend to this client (e.g. its event loop was blocked)."""
        self._fed_s += max(0.0, seconds)

    def _observe(self, now: float) -> float:
        audio = self._audio_s()
        if audio > self._last_audio_s or self._feeding_since is not None:
            self._last_audio_s = audio
            self.last_audio_at = now
        self._history.append((now, audio, self._server_busy_s(now)))
        while len(self._history) > 2 and self._history[1][0] <= now - self.start_grace_s:
            self._history.popleft()
        return audio

    def check(self) -> Optional[LimitExceeded]:
        now = self._clock()
        audio = self._observe(now)
        if self.max_session_s and now - self.started_at >= self.max_session_s:
            return SessionTooLong(f"Sessions last at most {self.max_session_s:g} s")
        if self.input_ended:  # the client is done sending: only the session cap still applies
            return None
        if self.idle_timeout_s and now - self.last_audio_at >= self.idle_timeout_s:
            return IdleTimeout(f"No audio for {self.idle_timeout_s:g} s")
        too_little = self._too_little_audio(now, audio)
        if too_little is not None:
            return too_little
        backlog = self._backlog_s()
        if self.max_backlog_s and backlog > self.max_backlog_s:
            return BacklogTooLarge(
                f"{backlog:.1f} s of audio are waiting to be transcribed (limit {self.max_backlog_s:g} s): "
                "send audio at real time")
        return None

    def _too_little_audio(self, now: float, audio: float) -> Optional[LimitExceeded]:
        """Once `start_grace_s` has passed: over the last `start_grace_s` seconds, at least
        `min_audio_rate` seconds of audio per second the server spent waiting for the client
        (a live client sends 1.0)."""
        if not self.min_audio_rate or now - self.started_at < self.start_grace_s:
            return None
        since, audio_then, busy_then = self._history[0]
        window_s = now - since
        waiting_for_client_s = window_s - (self._server_busy_s(now) - busy_then)
        received_s = audio - audio_then
        if waiting_for_client_s < window_s / 2:  # the server was the holdup most of the window: no verdict
            return None
        if received_s >= self.min_audio_rate * waiting_for_client_s:
            return None
        return TooLittleAudio(
            f"{received_s:.1f} s of audio in the last {window_s:.0f} s; a live stream must send at least "
            f"{self.min_audio_rate:g} s of audio per second")

    async def watch(self) -> None:
        """Returns never; raises `LimitExceeded` when a limit is hit. A wake-up later than asked
        means the event loop was busy and no frame of this client was read meanwhile: that
        delay is the server's, not the client's."""
        while True:
            asked_at = self._clock()
            await asyncio.sleep(CHECK_INTERVAL_S)
            late_s = self._clock() - asked_at - CHECK_INTERVAL_S
            if late_s > LATE_TOLERANCE_S:
                self.server_was_busy(late_s - LATE_TOLERANCE_S)
            exceeded = self.check()
            if exceeded is not None:
                raise exceeded
