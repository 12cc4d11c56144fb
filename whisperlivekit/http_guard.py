"""Connection guards uvicorn lacks, as two small protocol subclasses chosen in `uvicorn.Config(http=, ws=)`.

uvicorn bounds neither how long a client may take to send its request headers nor how large they
grow, and its WebSocket protocol answers every ping however many pongs already wait for a client
that reads nothing. So one process could be held by a few hundred half-open requests (each a
descriptor; `/health` stops answering once they run out) or grow without bound for one client.

`GuardedHttpProtocol` (httptools):
- headers must be complete within `--header-timeout` seconds of the connection (or, on a kept-alive
  connection, of the request's first byte), else 408 and close;
- request line and headers are at most `--max-header-bytes` bytes and `--max-headers` lines, else 431;
- at most `--max-open-connections` connections: past it the connection that has waited longest
  without a request in progress (a slow or idle one) is dropped for the new one; when every
  connection is busy the new one gets 503 at once, before it sends anything.

`BoundedWebSocketProtocol` (websockets sans-I/O): while the client leaves the server's write
buffer full (asyncio paused writing), pings get no pong (RFC 6455 lets a server answer only the
latest), and a client that stays that way for `--write-timeout` seconds is dropped, with a log line
(so is one that, after the server's close, leaves unsent data for as long). Application sends already
wait while the buffer is full, so the buffer per connection stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from whisperlivekit.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_open_connections: int
    write_timeout_s: float


def open_connection_cap(settings: Settings) -> int:
    """`--max-open-connections`, or half the descriptor limit (the rest: models, ffmpeg pipes, logs)."""
    if settings.max_open_connections:
        return settings.max_open_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) // 2)


class _RefusedRequest(Exception):
    """Raised inside a parser callback to stop parsing a request already answered."""


def _response(status: int, phrase: str, body: str) -> bytes:
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode()


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools protocol with a header deadline, header bounds and an open-connection cap."""

    limits: ConnectionLimits  # set by `guarded_protocols`

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: Optional[asyncio.TimerHandle] = None
        self._waiting_for_headers = True
        self._header_bytes = 0
        self._header_lines = 0
        self._refused = False
        self._idle_since = time.monotonic()

    # -- connections ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.limits.max_open_connections
        super().connection_made(transport)
        if full and not self._shed_one():
            self._refuse(503, "Service Unavailable", "Too many open connections")
            return
        self._start_header_timer()

    def _shed_one(self) -> bool:
        """Drop the connection that has waited longest with no request in progress; False if none."""
        idle = [c for c in self.connections if isinstance(c, GuardedHttpProtocol) and c is not self and c._has_no_request()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since)
        logger.debug("open-connection cap reached: dropping %s (no request for %.1f s)", oldest.client,
                     time.monotonic() - oldest._idle_since)
        oldest._stop_header_timer()
        oldest.transport.abort()
        return True

    def _has_no_request(self) -> bool:
        return not self._refused and (self.cycle is None or self.cycle.response_complete)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._idle_since = time.monotonic()
        super().on_response_complete()

    # -- header deadline and bounds --------------------------------------------------------
    def _start_header_timer(self) -> None:
        if self._header_timer is None and self.limits.header_timeout_s > 0:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers and not self.transport.is_closing():
            logger.debug("%s: request headers not complete after %g s", self.client, self.limits.header_timeout_s)
            self._refuse(408, "Request Timeout", "Request headers took too long")

    def _refuse(self, status: int, phrase: str, body: str) -> None:
        self._refused = True
        self._stop_header_timer()
        self.transport.write(_response(status, phrase, body))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a request refused with 408/431/503 gets no second answer
            super().send_400_response(msg)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._waiting_for_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._waiting_for_headers and not self._refused and self._header_bytes > self.limits.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", f"Headers exceed {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._waiting_for_headers = True
        self._header_bytes = self._header_lines = 0
        self._start_header_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > self.limits.max_headers:
            self._refuse(431, "Request Header Fields Too Large", f"More than {self.limits.max_headers} headers")
            raise _RefusedRequest()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._waiting_for_headers = False
        self._stop_header_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", f"Headers exceed {self.limits.max_header_bytes} bytes")
            raise _RefusedRequest()
        super().on_headers_complete()


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets sans-I/O protocol that stops answering pings into a full buffer and drops a stalled reader."""

    limits: ConnectionLimits  # set by `guarded_protocols`

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stall_timer: Optional[asyncio.TimerHandle] = None

    def handle_ping(self) -> None:
        if not self.writable.is_set():
            self.conn.data_to_send()  # the pongs: dropped while the client reads nothing
            return
        super().handle_ping()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None and self.limits.write_timeout_s > 0:
            self._stall_timer = self.loop.call_later(self.limits.write_timeout_s, self._drop_stalled_reader)

    def resume_writing(self) -> None:
        self._cancel_stall_timer()
        super().resume_writing()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_stall_timer()
        super().connection_lost(exc)

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._drop_unless_flushed()

    async def send(self, message) -> None:  # type: ignore[override]
        await super().send(message)
        if self.close_sent:
            self._drop_unless_flushed()

    def _drop_unless_flushed(self) -> None:
        """After a close, `transport.close()` waits for the buffer to drain, which a client that reads
        nothing never lets happen: give it `--write-timeout` seconds, then drop it."""
        if self._stall_timer is None and self.limits.write_timeout_s > 0 and not self.disconnected \
                and self.transport.get_write_buffer_size() > 0:
            self._stall_timer = self.loop.call_later(self.limits.write_timeout_s, self._drop_stalled_reader)

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _drop_stalled_reader(self) -> None:
        self._stall_timer = None
        if self.disconnected:
            return
        logger.warning("%s: closing the WebSocket: the client read nothing for %g s (%d bytes unsent)",
                       self.client, self.limits.write_timeout_s, self.transport.get_write_buffer_size())
        self.transport.abort()


def guarded_protocols(settings: Settings) -> Tuple[type, type]:
    """(http, ws) protocol classes for `uvicorn.Config`, bound to these settings' limits."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s, max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers, max_open_connections=open_connection_cap(settings),
        write_timeout_s=settings.write_timeout_s,
    )
    http = type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})
    ws = type("BoundedWebSocketProtocol", (BoundedWebSocketProtocol,), {"limits": limits})
    return http, ws
