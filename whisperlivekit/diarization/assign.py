"""Give each transcribed word the speaker who talks over it."""

from __future__ import annotations

from typing import List, Sequence

from whisperlivekit.asr.types import Word
from whisperlivekit.diarization.types import SpeakerSegment


def _gap(word: Word, segment: SpeakerSegment) -> float:
    """Distance in seconds between a word and a segment that do not overlap."""
    return max(segment.start - word.end, word.start - segment.end, 0.0)


def assign_speakers(words: Sequence[Word], segments: Sequence[SpeakerSegment]) -> List[int]:
    """The speaker of each word: the one whose segments overlap it longest.

    Punctuation (Whisper gives it its own timestamps, often at a turn boundary)
    keeps the speaker of the word it follows. A word that no segment overlaps (diarization lags the transcript, or the
    word falls in a pause) takes the speaker of the nearest segment. With no
    segments at all every word gets 0, "speaker not known yet".
    """
    if not segments:
        return [0] * len(words)
    speakers: List[int] = []
    for word in words:
        if speakers and not any(ch.isalnum() for ch in word.text):
            speakers.append(speakers[-1])  # punctuation belongs to the word it follows
            continue
        overlap: dict = {}
        for segment in segments:
            shared = min(word.end, segment.end) - max(word.start, segment.start)
            if shared > 0:
                overlap[segment.speaker] = overlap.get(segment.speaker, 0.0) + shared
        if overlap:
            speakers.append(max(overlap, key=lambda speaker: (overlap[speaker], -speaker)))
        else:
            speakers.append(min(segments, key=lambda segment: (_gap(word, segment), segment.speaker)).speaker)
    return speakers
