"""What routes need, built once by `create_app` and injected (no module globals)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

from fastapi import Request, WebSocket

from whisperlivekit.audio.decode import InputFormat
from whisperlivekit.config import Settings
from whisperlivekit.engine import TranscriptionEngine
from whisperlivekit.gpu.manager import GpuManager, Slot
from whisperlivekit.lifecycle import Sessions
from whisperlivekit.limits import AddressCounter
from whisperlivekit.runtime.model_pool import ModelPool

if TYPE_CHECKING:
    from whisperlivekit.api.security import AuthThrottle
    from whisperlivekit.metrics import Metrics


async def build_engine(services: "Services", slot: Slot, language: Optional[str],
                       input_format: Optional[InputFormat] = None) -> TranscriptionEngine:
    """A started engine for `slot`, on its device's shared worker (or a private one in the baseline mode).
    `input_format` None: what `--pcm-input` says (the /asr default)."""
    pool = services.pool
    worker = (await pool.private_worker(slot.device)) if services.settings.model_per_connection else await pool.worker(slot.device)
    engine = TranscriptionEngine(services.settings, slot, worker, language=language, input_format=input_format)
    await engine.start()
    return engine


EngineFactory = Callable[..., Awaitable[TranscriptionEngine]]  # (services, slot, language[, input_format=])


@dataclass
class Services:
    settings: Settings
    manager: GpuManager
    pool: ModelPool
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    active_engines: set = field(default_factory=set)
    engine_factory: EngineFactory = build_engine
    sessions: Sessions = field(default_factory=Sessions)
    addresses: AddressCounter = field(default_factory=lambda: AddressCounter(0))
    auth_throttle: Optional["AuthThrottle"] = None
    metrics: Optional["Metrics"] = None

    def __post_init__(self) -> None:
        from whisperlivekit.metrics import Metrics

        from whisperlivekit.api.security import AuthThrottle

        self.addresses = AddressCounter(self.settings.max_connections_per_ip)
        if self.auth_throttle is None:
            self.auth_throttle = AuthThrottle(self.settings.auth_max_failures, self.settings.auth_failure_window_s)
        if self.metrics is None:
            self.metrics = Metrics(self)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_ws_services(websocket: WebSocket) -> Services:
    return websocket.app.state.services
