"""One worker per device runs all of that device's inference off the event loop.

Engines `await worker.transcribe(request)`; the worker's lane threads take
requests from a queue and call the shared backend. On a GPU one lane batches
requests that arrive within `batch_window_ms` (up to `max_batch_size`); on a CPU
several single-threaded lanes run side by side, which beats batching there.

The worker also keeps the device's real-time load: compute seconds spent per
second of audio received over a sliding window. Admission can refuse a device
whose streams would start to lag.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Optional, Tuple

from whisperlivekit.asr.types import TranscribeRequest, TranscribeResult, WhisperBackend
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.errors import DeviceError

logger = logging.getLogger(__name__)

_STOP = object()
LOAD_WINDOW_S = 10.0


@dataclass
class _Job:
    kind: str  # "transcribe" or "call"
    payload: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    audio_s: float = 0.0
    enqueued_at: float = field(default_factory=time.monotonic)


def _deliver(job: _Job, result: Any = None, error: Optional[BaseException] = None) -> None:
    def settle() -> None:
        if job.future.done():  # the connection went away meanwhile
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # loop closed: nobody is waiting any more
        pass


def single_threaded_blas() -> None:
    """Keep numpy's OpenBLAS off its thread pool, process-wide.

    Lanes compute mel spectrograms with numpy while connections spawn ffmpeg.
    OpenBLAS's fork handler shuts its pool down, so a fork landing during a
    pooled matmul in another thread leaves that matmul waiting forever (seen as
    a hang under 32 concurrent connections). The matrices here are small: one
    thread loses nothing.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        logger.warning("threadpoolctl missing: set OPENBLAS_NUM_THREADS=1 to avoid fork-time BLAS hangs")


def _is_device_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in ("cuda", "out of memory", "cublas", "cudnn", "device-side"))


class DeviceWorker:
    def __init__(
        self,
        device: str,
        backend: WhisperBackend,
        *,
        lanes: int = 1,
        max_batch_size: int = 1,
        batch_window_ms: float = 0.0,
        on_device_failure: Optional[Callable[[str, str], None]] = None,
    ) -> None:
        single_threaded_blas()
        self.device = device
        self.backend = backend
        self.max_batch_size = max(1, max_batch_size)
        self.batch_window_s = batch_window_ms / 1000.0
        self._on_device_failure = on_device_failure
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._stats_lock = threading.Lock()
        self._compute: Deque[Tuple[float, float, float]] = deque()  # (finished_at, compute_s, audio_s)
        self.batches = 0
        self.requests = 0
        self.batch_sizes: Deque[int] = deque(maxlen=1000)
        self.compute_s_total = 0.0
        self._threads = [
            threading.Thread(target=self._lane, name=f"device-worker-{device}-{i}", daemon=True) for i in range(max(1, lanes))
        ]
        for thread in self._threads:
            thread.start()

    # -- submitted from the event loop ---------------------------------------------
    async def transcribe(self, request: TranscribeRequest) -> TranscribeResult:
        loop = asyncio.get_running_loop()
        job = _Job("transcribe", request, loop.create_future(), loop, audio_s=len(request.audio) / SAMPLE_RATE)
        self._queue.put(job)
        return await job.future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run other device work (diarization, VAD) on this device's lanes, in order."""
        loop = asyncio.get_running_loop()
        job = _Job("call", (fn, args), loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    # -- lane threads ----------------------------------------------------------------
    def _collect(self, first: _Job) -> Tuple[List[_Job], List[Any]]:
        batch, others = [first], []
        if self.max_batch_size == 1:
            return batch, others
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or job.kind != "transcribe":
                others.append(job)
                break
            batch.append(job)
        return batch, others

    def _lane(self) -> None:
        pending: List[Any] = []
        while True:
            job = pending.pop(0) if pending else self._queue.get()
            if job is _STOP:
                return
            if job.kind == "call":
                self._run_call(job)
                continue
            batch, others = self._collect(job)
            pending.extend(others)
            self._run_batch(batch)

    def _run_call(self, job: _Job) -> None:
        fn, args = job.payload
        if job.future.done():
            return
        try:
            _deliver(job, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting connection
            _deliver(job, error=exc)

    def _run_batch(self, batch: List[_Job]) -> None:
        batch = [job for job in batch if not job.future.done()]  # cancelled while queued
        if not batch:
            return
        started = time.monotonic()
        try:
            results = self.backend.transcribe_batch([job.payload for job in batch])
        except BaseException as exc:  # noqa: BLE001
            failure = DeviceError(f"inference failed on {self.device}: {exc}")
            if _is_device_failure(exc) and self._on_device_failure is not None:
                self._on_device_failure(self.device, str(exc))
            logger.exception("inference failed on %s for a batch of %d", self.device, len(batch))
            for job in batch:
                _deliver(job, error=failure)
            return
        finished = time.monotonic()
        with self._stats_lock:
            self.batches += 1
            self.requests += len(batch)
            self.batch_sizes.append(len(batch))
            self.compute_s_total += finished - started
            self._compute.append((finished, finished - started, sum(job.audio_s for job in batch)))
            self._forget_before(finished - LOAD_WINDOW_S)  # else it grows by a batch until someone asks for the load
        for job, result in zip(batch, results):
            _deliver(job, result)

    # -- load accounting -------------------------------------------------------------
    def realtime_load(self) -> float:
        """Compute seconds per wall second over the last window, per lane: ≥ 1.0 means saturated."""
        now = time.monotonic()
        with self._stats_lock:
            self._forget_before(now - LOAD_WINDOW_S)
            busy = sum(c for _, c, _ in self._compute)
        return busy / (LOAD_WINDOW_S * len(self._threads))

    def _forget_before(self, oldest: float) -> None:
        """Drop batches finished before `oldest` (call with the stats lock held)."""
        while self._compute and self._compute[0][0] < oldest:
            self._compute.popleft()

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=10)
        self.backend.close()
