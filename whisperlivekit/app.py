"""`create_app(settings)`: builds the GPU manager, the model pool and the routes from one Settings.

Tests build isolated apps by passing their own `probe` or `backend_factory`; the
CLI builds the manager and the pool with `build_runtime` (to fail before serving
if the model is missing) and passes both.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Optional, Tuple

from fastapi import FastAPI

from whisperlivekit.config import Settings
from whisperlivekit.gpu.manager import DeviceLoad, GpuManager
from whisperlivekit.gpu.nvml import GpuProbe, NvmlProbe, SimulatedProbe
from whisperlivekit.gpu.report import startup_lines
from whisperlivekit.runtime.load import DeviceLoads
from whisperlivekit.runtime.model_pool import BackendFactory, ModelPool
from whisperlivekit.history import History
from whisperlivekit.services import EngineFactory, Services

logger = logging.getLogger(__name__)


def make_probe(settings: Settings) -> GpuProbe:
    if settings.simulate_gpus:
        return SimulatedProbe(settings.simulate_gpus)
    if settings.device == "cpu":
        return SimulatedProbe(0)
    probe = NvmlProbe()
    if settings.device == "cuda" and probe.count() == 0:
        raise RuntimeError("--device cuda was requested but NVML finds no NVIDIA GPU on this host")
    return probe


def make_manager(settings: Settings, probe: GpuProbe, load: Optional[DeviceLoad] = None) -> GpuManager:
    return GpuManager(
        probe,
        gpu_ids=settings.gpus,
        max_connections_per_gpu=settings.max_connections_per_gpu,
        max_cpu_connections=settings.max_cpu_connections,
        min_free_memory_gb=settings.min_free_memory_gb,
        policy=settings.gpu_policy,
        cpu_fallback=settings.cpu_fallback,
        unhealthy_backoff_s=settings.unhealthy_backoff_s,
        max_realtime_load=settings.max_realtime_load,
        load=load,
    )


def build_runtime(
    settings: Settings, probe: Optional[GpuProbe] = None, backend_factory: Optional[BackendFactory] = None
) -> Tuple[GpuManager, ModelPool]:
    """The manager and the pool, wired once: the manager reads the devices' load, the pool's workers
    report device faults to the manager."""
    loads = DeviceLoads()
    manager = make_manager(settings, probe or make_probe(settings), loads)
    pool = ModelPool(settings, backend_factory, health=manager, loads=loads)
    return manager, pool


def preload(settings: Settings, manager: GpuManager, pool: ModelPool) -> None:
    """Load every model of every execution device now (blocking), when `--preload` asks for it."""
    if settings.preload:
        pool.preload(manager.execution_devices())


def create_app(
    settings: Settings,
    *,
    probe: Optional[GpuProbe] = None,
    manager: Optional[GpuManager] = None,
    pool: Optional[ModelPool] = None,
    backend_factory: Optional[BackendFactory] = None,
    engine_factory: Optional[EngineFactory] = None,
) -> FastAPI:
    """Pass `manager` and `pool` together (built by `build_runtime`), or neither."""
    if (manager is None) != (pool is None):
        raise TypeError("create_app: pass both manager and pool (see build_runtime), or neither")
    if manager is None or pool is None:
        manager, pool = build_runtime(settings, probe, backend_factory)
    services = Services(settings=settings, manager=manager, pool=pool)
    if engine_factory is not None:
        services.engine_factory = engine_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        history.start()  # the dashboard's charts: sampled from start-up, preload included
        for line in startup_lines(manager.view()):
            logger.info(line)
        await asyncio.to_thread(preload, settings, manager, pool)
        yield
        await history.stop()
        await asyncio.to_thread(pool.close)

    from whisperlivekit.api import asr, deepgram, openai_batch, realtime, security, status, web

    history = History(services)
    app = FastAPI(title="whisperlivekit", lifespan=lifespan, **security.api_docs_urls(settings))
    app.state.services = services
    app.state.history = history

    security.add_cors(app, settings)

    app.include_router(status.router)
    app.include_router(asr.router)
    app.include_router(deepgram.router)
    app.include_router(realtime.router)
    app.include_router(openai_batch.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    return app
