"""The last 15 minutes of the host, for the dashboard's charts: a ring buffer sampled every 2 s.

`/gpu-status` answers "now"; an operator deciding whether a host is near capacity
wants the curve. One background task (started and stopped by the app's lifespan)
appends a sample every `interval_s`, read through the same calls `/gpu-status`
makes (`manager.snapshot()`, `pool.workers()`), so a sample and a `/gpu-status`
answer taken at the same moment agree. The buffer lives in memory only: after a
restart the history starts empty.

A sample (JSON, as served by `GET /gpu-status/history`):

    {"t": 1764659000.0,             # wall-clock seconds (time.time())
     "connections": 5, "capacity": 16, "queued": 0,
     "refused": 0,                   # refusals since the previous sample (any reason)
     "devices": {"0": {...}, "cpu": {...}}}

and per device (a GPU by its id, "cpu" for CPU slots):

    {"connections": 2, "max_connections": 4, "healthy": true, "realtime_load": 0.31,
     "memory_used_gb": 7.4, "memory_total_gb": 15.75, "utilization_percent": 61.0,
     "commit_lag_p95_s": 1.2}       # p95 of the lags committed by its streams in the last 30 s, or null
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional, Set, Tuple

if TYPE_CHECKING:
    from whisperlivekit.services import Services

logger = logging.getLogger(__name__)

INTERVAL_S = 2.0
WINDOW_S = 15 * 60.0
LAG_WINDOW_S = 30.0  # the commit lags a p95 is taken over: long enough for a few committed words per stream
CPU_KEY = "cpu"


def p95(values: List[float]) -> Optional[float]:
    """Nearest-rank 95th percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class History:
    """Ring buffer of host samples; `sample()` takes one, `start()`/`stop()` run the sampler."""

    def __init__(self, services: "Services", *, interval_s: float = INTERVAL_S, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self._samples: Deque[dict] = deque(maxlen=max(1, int(window_s / interval_s)))
        self._lag_cursor: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
        self._lags: Dict[str, Deque[Tuple[float, float]]] = {}
        self._live_before: Set[object] = set()  # engines seen by the last sample: one that ended since still counts
        self._refused_before: Optional[float] = None
        self._task: Optional[asyncio.Task] = None

    # -- reading ----------------------------------------------------------------------
    def samples(self, since: float = 0.0) -> List[dict]:
        """Samples taken after `since` (wall-clock seconds), oldest first."""
        return [s for s in list(self._samples) if s["t"] > since]

    # -- sampling ---------------------------------------------------------------------
    def sample(self) -> dict:
        """Read the host now, append the sample and return it."""
        now = self._clock()
        snapshot = self.services.manager.snapshot()
        workers = self.services.pool.workers()
        lags = self._commit_lag_p95_by_device(now)
        devices: Dict[str, dict] = {}
        for gpu in snapshot["gpus"]:
            worker = workers.get(CPU_KEY if gpu["simulated"] else f"cuda:{gpu['gpu_id']}")
            key = str(gpu["gpu_id"])
            devices[key] = {
                "connections": gpu["active_connections"], "max_connections": gpu["max_connections"],
                "healthy": gpu["healthy"],
                "realtime_load": round(worker.realtime_load(), 3) if worker else 0.0,
                "memory_used_gb": gpu["used_memory_gb"], "memory_total_gb": gpu["total_memory_gb"],
                "utilization_percent": gpu["utilization_percent"], "commit_lag_p95_s": lags.get(key),
            }
        cpu = snapshot["cpu"]
        cpu_worker = workers.get(CPU_KEY)
        devices[CPU_KEY] = {
            "connections": cpu["active_connections"], "max_connections": cpu["max_connections"], "healthy": True,
            "realtime_load": round(cpu_worker.realtime_load(), 3) if cpu_worker else 0.0,
            "memory_used_gb": None, "memory_total_gb": None, "utilization_percent": None,
            "commit_lag_p95_s": lags.get(CPU_KEY),
        }
        healthy_slots = sum(g["max_connections"] for g in snapshot["gpus"] if g["healthy"])
        cpu_serves = not healthy_slots and cpu["fallback"]  # the manager's rule: CPU only with no healthy GPU
        entry = {
            "t": round(now, 3),
            "connections": snapshot["total_connections"],
            "capacity": healthy_slots + (cpu["max_connections"] if cpu_serves else 0),
            "queued": snapshot["queued"],
            "refused": self._refused_since_last(),
            "devices": devices,
        }
        self._samples.append(entry)
        return entry

    def _refused_since_last(self) -> int:
        total = 0.0
        for family in self.services.metrics.refused.collect():
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        before, self._refused_before = self._refused_before, total
        return 0 if before is None else int(round(total - before))

    def _commit_lag_p95_by_device(self, now: float) -> Dict[str, float]:
        """New commit lags of every stream, kept per device for LAG_WINDOW_S; their p95 per device.

        Streams that ended since the last sample are read once more, so their last words count too."""
        live = set(self.services.active_engines)
        for engine in live | self._live_before:
            lags = getattr(engine, "commit_lags_s", None)
            if lags is None:
                continue
            start = self._lag_cursor.get(engine, 0)
            fresh = lags[start:]
            self._lag_cursor[engine] = start + len(fresh)
            if fresh:
                gpu_id = engine.slot.gpu_id
                window = self._lags.setdefault(CPU_KEY if gpu_id is None else str(gpu_id), deque())
                window.extend((now, lag) for lag in fresh)
        self._live_before = live
        result = {}
        for key, window in self._lags.items():
            while window and now - window[0][0] > LAG_WINDOW_S:
                window.popleft()
            value = p95([lag for _, lag in window])
            if value is not None:
                result[key] = round(value, 3)
        return result

    # -- the sampler task -------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a sampler that dies leaves the charts flat: log and keep sampling
                logger.exception("history sample failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="history-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
