"""Each model is loaded once per device and shared by that device's connections.

Connections never load weights: they ask the pool for their device's
`DeviceWorker`, which owns that device's models (the Whisper backend, the VAD
session and, with `--diarization`, the diarizer), all loaded together once. Loading happens at start-up
(`--preload`) or on the first connection of a device, off the event loop, once
(a per-device lock makes concurrent first connections wait for one load).
`preload(devices)` is the one start-up path, called by the CLI and the app.
`--model-per-connection` keeps the old design (a private model per connection)
only as a benchmark baseline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, Optional

from whisperlivekit.weights.languages import model_languages
from whisperlivekit.weights.resolve import resolve_model
from whisperlivekit.asr.backends import CHECKPOINT_BACKENDS
from whisperlivekit.asr.types import WhisperBackend
from whisperlivekit.config import Settings
from whisperlivekit.runtime.device_worker import DeviceHealth, DeviceWorker
from whisperlivekit.runtime.load import DeviceLoads, LoadMeter

logger = logging.getLogger(__name__)

BackendFactory = Callable[[str, int], WhisperBackend]


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - non-Linux
        return 0.0


def _gpu_allocated_mb(device: str) -> float:
    if not device.startswith("cuda"):
        return 0.0
    try:
        import torch

        return torch.cuda.memory_allocated(device) / 2**20
    except Exception:  # torch absent, or CTranslate2 allocations invisible to torch
        return 0.0


def lanes_for(device: str) -> int:
    """CPU: one single-threaded lane per core (measured faster than one multi-threaded lane)."""
    return max(1, os.cpu_count() or 1) if device == "cpu" else 1


class ModelPool:
    def __init__(
        self,
        settings: Settings,
        backend_factory: Optional[BackendFactory] = None,
        *,
        health: Optional[DeviceHealth] = None,
        loads: Optional[DeviceLoads] = None,
    ) -> None:
        self.settings = settings
        self._backend_factory = backend_factory or self._default_factory
        self._health = health
        self.loads = loads or DeviceLoads()
        self._workers: Dict[str, DeviceWorker] = {}
        self._locks: Dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.load_times_s: Dict[str, float] = {}
        self._model_path: Optional[Path] = None
        self._languages: Optional[FrozenSet[str]] = None

    # -- loading -------------------------------------------------------------------
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = resolve_model(
                self.settings.model, self.settings.model_dir,
                checkpoints=self.settings.backend in CHECKPOINT_BACKENDS, allow_download=self.settings.allow_download,
                cache_dir=self.settings.cache_dir,
            )
        return self._model_path

    def languages(self) -> FrozenSet[str]:
        """Language codes the model accepts (read from its files once, without loading it)."""
        if self._languages is None:
            self._languages = model_languages(self.model_path(), self.settings.model)
        return self._languages

    def _default_factory(self, device: str, lanes: int) -> WhisperBackend:
        from whisperlivekit.asr.backends import load_backend

        return load_backend(self.settings, self.model_path(), device, lanes=lanes)

    def _batch_size(self, device: str) -> int:
        if self.settings.max_batch_size > 0:
            return self.settings.max_batch_size
        return 1 if device == "cpu" else 8

    def _load_diarizer(self, device: str) -> Any:
        from whisperlivekit.diarization import choose_backend, diarizer_device, load_diarizer, nemo_installed

        s = self.settings
        has_nemo = nemo_installed()
        backend = choose_backend(s.diarization_backend, device, s.diarization_model, has_nemo)
        if s.diarization_backend == "auto" and backend == "embedding" and device.startswith("cuda") and not has_nemo:
            logger.info("Diarization on %s: the embedding (CAM++) diarizer, since NeMo is not installed "
                        "(pip install 'whisperlivekit[sortformer]' for Sortformer)", device)
        place = device
        if backend == "embedding" and device.startswith("cuda"):
            import onnxruntime

            place = diarizer_device(backend, device, "CUDAExecutionProvider" in onnxruntime.get_available_providers())
            if place != device:
                logger.info("The embedding diarizer for %s runs on the CPU: ONNX Runtime here has no CUDA provider "
                            "(pip install onnxruntime-gpu to run it on the GPU)", device)
        opts = {}
        if backend == "sortformer":
            opts = dict(chunk_len=s.sortformer_chunk_len, chunk_right_context=s.sortformer_right_context,
                        fifo_len=s.sortformer_fifo_len, spkcache_len=s.sortformer_spkcache_len)
        started = time.perf_counter()
        diarizer = load_diarizer(backend, place, s.diarization_model, s.max_speakers, **opts)
        self.load_times_s[f"diarizer:{device}"] = time.perf_counter() - started
        logger.info("Loaded %s diarizer on %s in %.2f s%s", backend, place, time.perf_counter() - started,
                    f" (for the streams on {device})" if place != device else "")
        return diarizer

    def _build_worker(self, device: str, shared: bool = True) -> DeviceWorker:
        lanes = lanes_for(device)
        rss_before, gpu_before = _rss_mb(), _gpu_allocated_mb(device)
        started = time.perf_counter()
        backend = self._backend_factory(device, lanes)
        elapsed = time.perf_counter() - started
        self.load_times_s[device] = elapsed
        logger.info(
            "Loaded model %s (%s) on %s in %.2f s (+%.0f MB RSS%s), %d lane(s), max batch %d",
            self.settings.model, getattr(backend, "name", "?"), device, elapsed, _rss_mb() - rss_before,
            f", +{_gpu_allocated_mb(device) - gpu_before:.0f} MB GPU" if device.startswith("cuda") else "",
            lanes, self._batch_size(device),
        )
        vad_model = None
        if self.settings.vac:
            from whisperlivekit.audio.vad import SileroVadModel

            vad_model = SileroVadModel()
        diarizer = self._load_diarizer(device) if self.settings.diarization else None
        return DeviceWorker(
            device, backend, lanes=lanes, max_batch_size=self._batch_size(device),
            batch_window_ms=self.settings.batch_window_ms, vad_model=vad_model, diarizer=diarizer,
            health=self._health, load=self.loads.meter(device, lanes) if shared else LoadMeter(lanes),
        )

    def worker_sync(self, device: str) -> DeviceWorker:
        """The device's shared worker, loading its models on first use (blocking; call off the loop)."""
        with self._guard:
            if device in self._workers:
                return self._workers[device]
            lock = self._locks.setdefault(device, threading.Lock())
        with lock:
            if device not in self._workers:
                worker = self._build_worker(device)
                with self._guard:
                    self._workers[device] = worker
            return self._workers[device]

    async def worker(self, device: str) -> DeviceWorker:
        existing = self._workers.get(device)
        if existing is not None:
            return existing
        return await asyncio.to_thread(self.worker_sync, device)

    async def private_worker(self, device: str) -> DeviceWorker:
        """`--model-per-connection` baseline: fresh models for one connection; the caller closes the worker."""
        return await asyncio.to_thread(self._build_worker, device, False)

    def preload(self, devices: Iterable[str]) -> None:
        """Load every model of each device now (blocking): the one start-up path for the CLI and the app."""
        for device in devices:
            self.worker_sync(device)

    # -- introspection ---------------------------------------------------------------
    def workers(self) -> Dict[str, DeviceWorker]:
        with self._guard:
            return dict(self._workers)

    def realtime_load(self, device: str) -> float:
        return self.loads.realtime_load(device)

    def close(self) -> None:
        with self._guard:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.close()
