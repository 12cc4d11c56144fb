"""What routes need, built once by `create_app` and injected (no module globals)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request, WebSocket

from whisperlivekit.config import Settings
from whisperlivekit.gpu.manager import GpuManager
from whisperlivekit.runtime.model_pool import ModelPool


@dataclass
class Services:
    settings: Settings
    manager: GpuManager
    pool: ModelPool
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    active_engines: set = field(default_factory=set)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_ws_services(websocket: WebSocket) -> Services:
    return websocket.app.state.services
