"""What a connection's engine tells its adapter, free of any wire format.

`/asr` reads snapshots (`engine.updates()`); the vendor adapters (`api/deepgram.py`, …) read
these typed events from `engine.events()` and translate them to their protocol. Times are
seconds of the connection's audio (16 kHz timeline, from its first sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from whisperlivekit.asr.types import Word

# why a segment was closed (`Committed.closed_by`)
BY_VAD = "vad"  # the VAD heard the speaker stop
BY_FINALIZE = "finalize"  # the client asked for it (`engine.finalize()`)
BY_END = "end"  # the client's audio ended


@dataclass(frozen=True)
class Partial:
    """The tentative tail: may still change or vanish. Sent when it changes."""

    words: Tuple[Word, ...]


@dataclass(frozen=True)
class Committed:
    """Words that will not change any more (possibly none when `closed_by` is set).

    `closed_by` is set (BY_VAD, BY_FINALIZE, BY_END) when these words close a segment:
    everything the engine heard up to now is committed.
    """

    words: Tuple[Word, ...]
    closed_by: Optional[str] = None


@dataclass(frozen=True)
class SpeechStarted:
    """The VAD heard speech begin at `at_s`."""

    at_s: float


@dataclass(frozen=True)
class SpeechStopped:
    """The VAD heard speech end at `at_s` (after its minimum silence)."""

    at_s: float


@dataclass(frozen=True)
class Final:
    """The stream is over and fully transcribed; the last event. `audio_s`: audio received in all."""

    audio_s: float


EngineEvent = Union[Partial, Committed, SpeechStarted, SpeechStopped, Final]
