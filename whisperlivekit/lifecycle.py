"""Graceful shutdown: on SIGTERM/SIGINT stop admitting, let active streams finish, then exit 0.

1. The first signal sets `services.draining`: `/ready` answers 503 and new /asr connections are
   refused as `ServerShuttingDown` (its close code is in `api/errors.py`). The listening socket stays open meanwhile, so
   probes and late clients get a clear answer rather than a refused connection.
2. Active streams go on as usual for up to `--drain-timeout` seconds; a client that sends its end
   frame gets its final transcript and `ready_to_stop`.
3. At the deadline every remaining stream is finished as if its audio had ended (final transcript,
   `ready_to_stop`, then the close `api/errors.py` calls FINISHED_AT_SHUTDOWN); then uvicorn shuts down and the process exits 0.
A second signal skips the wait (uvicorn's own shutdown closes what is left).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Dict, Optional

import uvicorn

logger = logging.getLogger(__name__)

FINISH_GRACE_S = 30.0  # after the deadline: time for the finished streams' last transcription step


class Sessions:
    """Active /asr streams, each with an event that tells it to finish now."""

    def __init__(self) -> None:
        self._finish: Dict[str, asyncio.Event] = {}
        self._changed: Optional[asyncio.Event] = None

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def register(self, connection_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._finish[connection_id] = event
        self._notify()
        return event

    def unregister(self, connection_id: str) -> None:
        self._finish.pop(connection_id, None)
        self._notify()

    def __len__(self) -> int:
        return len(self._finish)

    def finish_all(self) -> None:
        for event in self._finish.values():
            event.set()

    async def wait_empty(self, timeout_s: float) -> bool:
        """True once no stream is active; False at the timeout."""
        deadline = time.monotonic() + timeout_s
        self._changed = asyncio.Event()
        while self._finish:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return not self._finish
        return True


async def drain(services, timeout_s: float) -> None:
    """Stop admitting, wait for active streams up to `timeout_s`, then finish the rest."""
    services.draining = True
    sessions: Sessions = services.sessions
    logger.info("Draining: %d active stream(s), up to %.0f s", len(sessions), timeout_s)
    if await sessions.wait_empty(timeout_s):
        logger.info("Drained: all streams ended")
        return
    logger.info("Drain deadline: finishing %d remaining stream(s)", len(sessions))
    sessions.finish_all()
    if not await sessions.wait_empty(FINISH_GRACE_S):
        logger.warning("%d stream(s) still open after finishing; closing them", len(sessions))


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains (see module docstring) before shutting down."""

    def __init__(self, config: uvicorn.Config, services, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.services = services
        self.drain_timeout_s = drain_timeout_s
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._drain_task: Optional[asyncio.Task] = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._drain_task is None and self._loop is not None and not self.should_exit:
            self.services.draining = True
            self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)
            self._drain_task = True  # type: ignore[assignment]  # marks "started" until the task exists
            return
        # a second signal: shut down now (no re-raise of the signal, so the exit status stays 0)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
        self.services.sessions.finish_all()

    def _start_drain(self, signal_name: str) -> None:
        logger.info("Received %s", signal_name)

        async def run() -> None:
            try:
                await drain(self.services, self.drain_timeout_s)
            finally:
                self.should_exit = True

        self._drain_task = asyncio.ensure_future(run())
