"""Earliest-deadline-first order for a device's live jobs.

A live stream's next step is due from the moment its oldest uncommitted audio
arrived (`due_at`, monotonic seconds; the engine's `oldest_uncommitted_s`). A free lane takes the job whose `due_at` is
earliest, so the stream that has waited longest for its words goes first whatever
the order the jobs were submitted in; a stream just served is due again only from
the words it left uncommitted (most of them heard at the end of its step), so it
goes behind the others (fairness without a round-robin).

Jobs are plain objects with `due_at`, `cancelled` and `bucket` attributes; a
cancelled job is dropped the moment a lane looks at the queue, never run. File
steps wait in a separate FIFO that is read only when no live job waits.

`take_more` forms a batch from the jobs with the nearest deadlines that share
the first job's encoder-window bucket (a batch of mixed windows would run as
separate passes anyway, delaying the first job for the others), or from any bucket
where the backend decodes mixed windows as one batch (the torch backend on a GPU).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple

WINDOW_BUCKET_S = 2.0  # the backends' encoder-window bucket


def window_bucket(audio_s: float) -> int:
    """The encoder-window bucket of a request of `audio_s` seconds (2 s buckets)."""
    return int(audio_s // WINDOW_BUCKET_S)


class DeadlineQueue:
    """Live jobs by earliest `due_at`, file jobs FIFO behind them; thread-safe, with a stop signal."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._live: List[Tuple[float, int, Any]] = []
        self._files: Deque[Any] = deque()
        self._seq = itertools.count()
        self._stopped = False

    # -- producers ---------------------------------------------------------------------
    def put(self, job: Any) -> None:
        with self._cond:
            heapq.heappush(self._live, (job.due_at, next(self._seq), job))
            self._cond.notify_all()  # a lane collecting a batch waits here too

    def put_file(self, job: Any) -> None:
        with self._cond:
            self._files.append(job)
            self._cond.notify()

    def stop(self) -> None:
        """Once what is queued has been taken, `take` returns None (lanes exit)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- lanes -------------------------------------------------------------------------
    def take(self, timeout: Optional[float] = None) -> Optional[Any]:
        """The live job due earliest, else the oldest file job; None once stopped and empty (or on timeout)."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._drop_cancelled_head()
                if self._live:
                    return heapq.heappop(self._live)[2]
                while self._files and self._files[0].cancelled:
                    self._files.popleft()
                if self._files:
                    return self._files.popleft()
                if self._stopped:
                    return None
                if deadline is None:
                    self._cond.wait()
                else:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    self._cond.wait(left)

    def take_more(self, batch: List[Any], max_size: int, any_bucket: bool = False) -> None:
        """Fill `batch` up to `max_size` with waiting jobs of its first job's kind and window bucket (any
        bucket, for a backend that decodes mixed windows as one batch), nearest deadlines first (the others
        stay queued in order)."""
        first = batch[0]
        kind = first.kind
        with self._cond:
            kept: List[Tuple[float, int, Any]] = []
            while self._live and len(batch) < max_size:
                entry = heapq.heappop(self._live)
                job = entry[2]
                if job.cancelled:
                    continue
                if job.kind == kind and (any_bucket or job.bucket == first.bucket):
                    batch.append(job)
                else:
                    kept.append(entry)
            for entry in kept:
                heapq.heappush(self._live, entry)

    def wait_for_more(self, timeout_s: float) -> None:
        """Sleep up to `timeout_s` or until another job arrives (a batch window)."""
        with self._cond:
            if not self._stopped:
                self._cond.wait(timeout_s)

    def _drop_cancelled_head(self) -> None:
        while self._live and self._live[0][2].cancelled:
            heapq.heappop(self._live)

    # -- introspection -----------------------------------------------------------------
    def live_depth(self) -> int:
        with self._cond:
            return sum(1 for _, _, job in self._live if not job.cancelled)

    def discard_cancelled(self) -> None:
        """Forget cancelled jobs anywhere in the queue (a cancelled connection leaves at once)."""
        with self._cond:
            live = [entry for entry in self._live if not entry[2].cancelled]
            if len(live) != len(self._live):
                heapq.heapify(live)
                self._live = live
            self._files = deque(job for job in self._files if not job.cancelled)
