"""`create_app(settings)`: builds the GPU manager, the model pool and the routes from one Settings.

Tests build isolated apps by passing their own `probe`, `manager` or `pool`; the
CLI passes nothing and gets NVML (or simulated GPUs) and the real models.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import List, Optional

from fastapi import FastAPI

from whisperlivekit.config import Settings
from whisperlivekit.gpu.manager import GpuManager
from whisperlivekit.gpu.nvml import GpuProbe, NvmlProbe, SimulatedProbe
from whisperlivekit.runtime.model_pool import ModelPool
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


def make_manager(settings: Settings, probe: GpuProbe, pool: Optional[ModelPool] = None) -> GpuManager:
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
        load_of=pool.realtime_load if pool is not None else None,
    )


def execution_devices(manager: GpuManager) -> List[str]:
    """Devices engines will run on: each real GPU, or the CPU (no GPUs, or simulated ones)."""
    snapshot = manager.snapshot()
    devices = sorted({"cpu" if g["simulated"] else f"cuda:{g['gpu_id']}" for g in snapshot["gpus"]})
    if not devices or manager.cpu_fallback and not any(d.startswith("cuda") for d in devices):
        devices = sorted(set(devices) | {"cpu"})
    return devices


def create_app(
    settings: Settings,
    *,
    probe: Optional[GpuProbe] = None,
    manager: Optional[GpuManager] = None,
    pool: Optional[ModelPool] = None,
    engine_factory: Optional[EngineFactory] = None,
) -> FastAPI:
    if pool is None:
        pool = ModelPool(settings)
    if manager is None:
        manager = make_manager(settings, probe or make_probe(settings), pool)
    if pool.on_device_failure is None:  # a device that fails inference is taken out of rotation
        pool.on_device_failure = lambda device, reason: device.startswith("cuda") and manager.mark_unhealthy(int(device.split(":")[1]), reason)
    services = Services(settings=settings, manager=manager, pool=pool)
    if engine_factory is not None:
        services.engine_factory = engine_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for line in manager.table() or ["no GPUs: engines run on the CPU"]:
            logger.info(line)
        if settings.preload:
            for device in execution_devices(manager):
                await asyncio.to_thread(pool.worker_sync, device)
                if settings.diarization:
                    await asyncio.to_thread(pool.diarizer_sync, device)
            if settings.vac:
                await asyncio.to_thread(pool.vad_model)
        yield
        await asyncio.to_thread(pool.close)

    from whisperlivekit.api import asr, security, status, web

    app = FastAPI(title="whisperlivekit", lifespan=lifespan, **security.api_docs_urls(settings))
    app.state.services = services

    security.add_cors(app, settings)

    app.include_router(status.router)
    app.include_router(asr.router)
    app.include_router(web.router)
    app.mount("/static", web.static_files(), name="static")
    return app
