"""What a device worker's scheduler did, as histograms: read by /metrics and /gpu-status.

- `step_interval_s`: per stream, start of one transcription step to the start of its next
  (lightly loaded ~0.4-0.6 s; it grows with load as each step covers more audio);
- `queue_wait_s`: a job's time in the queue, submission to a lane taking it;
- `schedule_lag_s`: at a step's start, the age of the stream's oldest uncommitted audio
  (what the deadline-first order minimises; it bounds how late the stream's words come);
- `batch_size` and `decoded_tokens` (per step, prompt and forced tokens excluded).

Fixed buckets, cumulative counts as Prometheus wants them; thread-safe.
"""

from __future__ import annotations

import bisect
import threading
from typing import Dict, List, Sequence, Tuple

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    def state(self) -> Tuple[List[Tuple[str, int]], float, int]:
        """(cumulative buckets as (upper bound, count) with "+Inf" last, sum, count)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip([str(b) for b in self.buckets] + ["+Inf"], counts):
            running += count
            cumulative.append((bound, running))
        return cumulative, total, running

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (0.0 when empty; the top bound if beyond)."""
        cumulative, _, count = self.state()
        if not count:
            return 0.0
        rank = q * count
        for (bound, running), upper in zip(cumulative, list(self.buckets) + [self.buckets[-1]]):
            if running >= rank:
                return float(upper)
        return float(self.buckets[-1])

    def summary(self) -> Dict[str, float]:
        _, total, count = self.state()
        return {"count": count, "mean": round(total / count, 4) if count else 0.0,
                "p50": self.quantile(0.5), "p95": self.quantile(0.95)}


class StepStats:
    """The scheduler's histograms for one device."""

    def __init__(self) -> None:
        self.step_interval_s = Histogram(SECONDS_BUCKETS)
        self.queue_wait_s = Histogram(SECONDS_BUCKETS)
        self.schedule_lag_s = Histogram(SECONDS_BUCKETS)
        self.batch_size = Histogram(COUNT_BUCKETS)
        self.decoded_tokens = Histogram(COUNT_BUCKETS)

    def histograms(self) -> Dict[str, Histogram]:
        return {"step_interval_seconds": self.step_interval_s, "queue_wait_seconds": self.queue_wait_s,
                "schedule_lag_seconds": self.schedule_lag_s, "batch_size": self.batch_size,
                "decoded_tokens": self.decoded_tokens}

    def summary(self) -> Dict[str, Dict[str, float]]:
        return {name: h.summary() for name, h in self.histograms().items()}
