"""Each model is loaded once per device and shared by that device's connections.

Connections never load weights: they ask the pool for their device's
`DeviceWorker`, which owns the shared backend. Loading happens at start-up
(`--preload`) or on the first connection of a device, off the event loop, once
(a per-device lock makes concurrent first connections wait for one load).
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
from typing import Callable, Dict, Optional

from whisperlivekit.weights.resolve import resolve_model
from whisperlivekit.asr.backends import CHECKPOINT_BACKENDS
from whisperlivekit.asr.types import WhisperBackend
from whisperlivekit.config import Settings
from whisperlivekit.runtime.device_worker import DeviceWorker

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
        on_device_failure: Optional[Callable[[str, str], None]] = None,
    ) -> None:
        self.settings = settings
        self._backend_factory = backend_factory or self._default_factory
        self.on_device_failure = on_device_failure
        self._workers: Dict[str, DeviceWorker] = {}
        self._locks: Dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.load_times_s: Dict[str, float] = {}
        self._model_path: Optional[Path] = None
        self._vad_model = None
        self._diarizers: Dict[str, object] = {}

    # -- loading -------------------------------------------------------------------
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = resolve_model(
                self.settings.model, self.settings.model_dir,
                checkpoints=self.settings.backend in CHECKPOINT_BACKENDS, allow_download=self.settings.allow_download,
                cache_dir=self.settings.cache_dir,
            )
        return self._model_path

    def _default_factory(self, device: str, lanes: int) -> WhisperBackend:
        from whisperlivekit.asr.backends import load_backend

        return load_backend(self.settings, self.model_path(), device, lanes=lanes)

    def _batch_size(self, device: str) -> int:
        if self.settings.max_batch_size > 0:
            return self.settings.max_batch_size
        return 1 if device == "cpu" else 8

    def _build_worker(self, device: str) -> DeviceWorker:
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
        return DeviceWorker(
            device, backend, lanes=lanes, max_batch_size=self._batch_size(device),
            batch_window_ms=self.settings.batch_window_ms, on_device_failure=self._report_failure,
        )

    def _report_failure(self, device: str, reason: str) -> None:
        if self.on_device_failure is not None:
            self.on_device_failure(device, reason)

    def worker_sync(self, device: str) -> DeviceWorker:
        """The device's shared worker, loading the model on first use (blocking; call off the loop)."""
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
        """`--model-per-connection` baseline: a fresh model for one connection; the caller closes it."""
        return await asyncio.to_thread(self._build_worker, device)

    def diarizer_sync(self, device: str):
        """The device's shared diarization model (state lives per connection)."""
        with self._guard:
            lock = self._locks.setdefault(f"diarizer:{device}", threading.Lock())
        with lock:
            if device not in self._diarizers:
                from whisperlivekit.diarization import load_diarizer

                s = self.settings
                backend = s.diarization_backend if s.diarization_backend != "auto" else ("sortformer" if device.startswith("cuda") else "embedding")
                opts = {}
                if backend == "sortformer":
                    opts = dict(chunk_len=s.sortformer_chunk_len, chunk_right_context=s.sortformer_right_context,
                                fifo_len=s.sortformer_fifo_len, spkcache_len=s.sortformer_spkcache_len)
                started = time.perf_counter()
                self._diarizers[device] = load_diarizer(backend, device, s.diarization_model, s.max_speakers, **opts)
                self.load_times_s[f"diarizer:{device}"] = time.perf_counter() - started
                logger.info("Loaded %s diarizer on %s in %.2f s", backend, device, time.perf_counter() - started)
            return self._diarizers[device]

    async def diarizer(self, device: str):
        existing = self._diarizers.get(device)
        return existing if existing is not None else await asyncio.to_thread(self.diarizer_sync, device)

    def vad_model(self):
        """Silero VAD: one CPU session for the process; state lives per connection."""
        with self._guard:
            if self._vad_model is None:
                from whisperlivekit.audio.vad import SileroVadModel

                self._vad_model = SileroVadModel()
            return self._vad_model

    # -- introspection ---------------------------------------------------------------
    def workers(self) -> Dict[str, DeviceWorker]:
        with self._guard:
            return dict(self._workers)

    def realtime_load(self, device: str) -> float:
        worker = self._workers.get(device)
        return worker.realtime_load() if worker else 0.0

    def close(self) -> None:
        with self._guard:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.close()
        for diarizer in list(self._diarizers.values()):
            diarizer.close()
        self._diarizers.clear()
