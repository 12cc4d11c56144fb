"""Engine results → the JSON messages of PROTOCOL.md (the only place that knows the wire format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from whisperlivekit.asr.types import Word

SILENCE_SPEAKER = -2
UNKNOWN_SPEAKER = 0


def format_time(seconds: float) -> str:
    """`H:MM:SS.cc`, as WhisperLiveKit clients expect."""
    seconds = max(0.0, seconds)
    centis = int(round(seconds * 100))
    hours, centis = divmod(centis, 360_000)
    minutes, centis = divmod(centis, 6_000)
    secs, centis = divmod(centis, 100)
    return f"{hours}:{minutes:02d}:{secs:02d}.{centis:02d}"


@dataclass
class Line:
    speaker: int
    start: float
    end: float
    words: List[Word] = field(default_factory=list)

    def to_json(self) -> dict:
        text = None if self.speaker == SILENCE_SPEAKER else "".join(w.text for w in self.words).strip()
        return {"speaker": self.speaker, "text": text, "start": format_time(self.start), "end": format_time(self.end)}


def build_lines(
    words: Sequence[Word],
    speakers: Sequence[int],
    pause_s: float,
    trailing_silence_from: Optional[float] = None,
    now_s: float = 0.0,
) -> List[Line]:
    """Group committed words into lines: a new line on a speaker change, a silence line on a long pause."""
    lines: List[Line] = []
    previous_end = 0.0
    for word, speaker in zip(words, speakers):
        if word.start - previous_end >= pause_s:
            lines.append(Line(SILENCE_SPEAKER, previous_end, word.start))
        current = lines[-1] if lines else None
        if current is None or current.speaker != speaker:
            current = Line(speaker, word.start, word.end)
            lines.append(current)
        current.words.append(word)
        current.end = word.end
        previous_end = word.end
    if trailing_silence_from is not None:
        start = max(previous_end, trailing_silence_from)
        if now_s - start >= pause_s:
            lines.append(Line(SILENCE_SPEAKER, start, now_s))
    return lines


def update_message(
    status: str,
    lines: Sequence[Line],
    buffer_transcription: str,
    buffer_diarization: str,
    remaining_time_transcription: float,
    remaining_time_diarization: float,
    error: Optional[str] = None,
) -> dict:
    message = {
        "status": status,
        "lines": [line.to_json() for line in lines],
        "buffer_transcription": buffer_transcription,
        "buffer_diarization": buffer_diarization,
        "remaining_time_transcription": round(max(0.0, remaining_time_transcription), 2),
        "remaining_time_diarization": round(max(0.0, remaining_time_diarization), 2),
    }
    if error is not None:
        message["error"] = error
    return message


def error_message(error: str) -> dict:
    """Sent before closing on bad input; both fields so old and new clients show it."""
    return {"type": "error", "status": "error", "error": error}


def config_message(use_audio_worklet: bool, gpu_id: Optional[int], device: str, connection_id: str, **extra: object) -> dict:
    return {"type": "config", "useAudioWorklet": use_audio_worklet, "gpu_id": gpu_id, "device": device,
            "connection_id": connection_id, **extra}


READY_TO_STOP = {"type": "ready_to_stop"}
