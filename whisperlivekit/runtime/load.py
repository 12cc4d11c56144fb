"""Real-time load per device: compute seconds spent per wall second, per lane.

A `LoadMeter` belongs to one device worker, which records each job's compute
time into it. `DeviceLoads` holds the meters of the shared workers and is what
the GPU manager is given at construction (it reads `realtime_load(device)` to
refuse a device whose streams would start to lag). It exists before the pool and
the manager, so neither needs the other to be built first.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, Tuple

LOAD_WINDOW_S = 10.0
# A live stream needs one step per REFERENCE_STEP_S of audio to stay real-time. The scheduler
# steps an idle device's streams more often (lower latency); such a step is recorded as the
# share of its compute that the reference rate needs (new audio / REFERENCE_STEP_S), so the
# load stays what the streams demand, not what spare capacity was spent on.
REFERENCE_STEP_S = 1.0


class LoadMeter:
    """Busy time of one worker's lanes over a sliding window (thread-safe)."""

    def __init__(self, lanes: int, window_s: float = LOAD_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.lanes = max(1, lanes)
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: Deque[Tuple[float, float]] = deque()  # (finished_at, compute_s)

    def record(self, compute_s: float) -> None:
        now = self._clock()
        with self._lock:
            self._busy.append((now, compute_s))
            self._forget_before(now - self.window_s)  # else it grows by a job until someone asks for the load

    def realtime_load(self) -> float:
        """Compute seconds per wall second over the window, per lane: ≥ 1.0 means saturated."""
        now = self._clock()
        with self._lock:
            self._forget_before(now - self.window_s)
            busy_s = sum(c for _, c in self._busy)
        return busy_s / (self.window_s * self.lanes)

    def _forget_before(self, oldest: float) -> None:
        """Drop jobs finished before `oldest` (the lock is held)."""
        while self._busy and self._busy[0][0] < oldest:
            self._busy.popleft()


class DeviceLoads:
    """The meters of the shared device workers, by device ("cpu", "cuda:N")."""

    def __init__(self) -> None:
        self._meters: Dict[str, LoadMeter] = {}
        self._lock = threading.Lock()

    def meter(self, device: str, lanes: int) -> LoadMeter:
        """The device's meter, created on first use."""
        with self._lock:
            if device not in self._meters:
                self._meters[device] = LoadMeter(lanes)
            return self._meters[device]

    def realtime_load(self, device: str) -> float:
        with self._lock:
            meter = self._meters.get(device)
        return meter.realtime_load() if meter is not None else 0.0
