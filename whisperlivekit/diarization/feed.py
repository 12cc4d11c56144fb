"""A connection's audio, grouped into pieces for its diarizer.

The diarizer runs better (and costs fewer device jobs) on ~0.5 s pieces than on
every 100 ms chunk. At the end of the stream a little silence lets the diarizer
settle its last labels.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, List, Optional

import numpy as np

from whisperlivekit.audio import SAMPLE_RATE

MIN_PIECE_S = 0.5
SETTLE_EXTRA_S = 0.2


class DiarizationFeed:
    def __init__(self, latency_s: float = 1.0, min_piece_s: float = MIN_PIECE_S) -> None:
        self.settle_samples = int((latency_s + SETTLE_EXTRA_S) * SAMPLE_RATE)
        self.min_piece_samples = int(min_piece_s * SAMPLE_RATE)
        self._queue: "asyncio.Queue[Optional[np.ndarray]]" = asyncio.Queue()

    def push(self, chunk: np.ndarray) -> None:
        self._queue.put_nowait(chunk)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def pieces(self) -> AsyncIterator[np.ndarray]:
        """Pieces of at least `min_piece_s` (what has queued up meanwhile), then the last one plus silence."""
        pending: List[np.ndarray] = []
        ended = False
        while not ended:
            chunk = await self._queue.get()
            if chunk is None:
                ended = True
                pending.append(np.zeros(self.settle_samples, np.float32))
            else:
                pending.append(chunk)
            while not ended and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    self._queue.put_nowait(None)  # end after this piece
                    break
                pending.append(nxt)
            if ended or sum(len(c) for c in pending) >= self.min_piece_samples:
                piece, pending = np.concatenate(pending), []
                yield piece
