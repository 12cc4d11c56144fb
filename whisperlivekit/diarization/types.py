"""The vocabulary of diarization: speaker segments, per-stream state, the model protocol.

A diarization model is loaded once per device and shared by that device's
connections, like a Whisper backend; everything a connection accumulates
(audio tail, speaker profiles, caches) lives in its own `DiarizationState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Protocol, Set

import numpy as np



@dataclass(frozen=True)
class SpeakerSegment:
    """`speaker` (1-based) talks from `start` to `end`, in seconds from the start of the stream."""

    start: float
    end: float
    speaker: int

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class DiarizationState:
    """What one connection has accumulated; backends subclass it with their own fields.

    `processed_s` is how far into the stream speaker labels are final: segments
    never change before it. `segments` holds every segment so far, each one a
    maximal run of one speaker, in order of their start. Overlapped speech (two
    speakers at once) shows as overlapping segments of different speakers.
    """

    processed_s: float = 0.0
    segments: List[SpeakerSegment] = field(default_factory=list)
    _latest: Dict[int, int] = field(default_factory=dict, repr=False)  # speaker -> index of its last segment
    _touched: Set[int] = field(default_factory=set, repr=False)

    def mark(self, speaker: int, start_s: float, end_s: float) -> None:
        """Record that `speaker` talks over [start_s, end_s); extends that speaker's last segment if they touch."""
        index = self._latest.get(speaker)
        if index is not None and start_s - self.segments[index].end <= 1e-6:
            last = self.segments[index]
            self.segments[index] = SpeakerSegment(last.start, max(last.end, end_s), speaker)
        else:
            self.segments.append(SpeakerSegment(start_s, end_s, speaker))
            index = len(self.segments) - 1
            self._latest[speaker] = index
        self._touched.add(index)

    def take_changes(self) -> List[SpeakerSegment]:
        """Segments added or extended since the last call (what `process` returns)."""
        changed = [self.segments[i] for i in sorted(self._touched)]
        self._touched.clear()
        return changed


class DiarizationModel(Protocol):
    """Speaker diarization loaded on one device, shared by its connections.

    Called only from the device's worker thread; keeps no per-stream state.
    """

    name: str
    device: str

    def new_stream(self) -> DiarizationState:
        """Fresh state for one connection (cheap: no model work)."""
        ...

    def process(self, state: DiarizationState, audio: np.ndarray) -> List[SpeakerSegment]:
        """Feed the next 16 kHz mono float32 samples of this stream.

        Returns the segments that are new or were extended by this call; the
        complete picture is `state.segments`.
        """
        ...

    def close(self) -> None: ...
