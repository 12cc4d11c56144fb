"""Engine results → the JSON messages of PROTOCOL.md (the only place that knows the wire format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Sequence

from whisperlivekit.asr.types import Word

if TYPE_CHECKING:
    from whisperlivekit.diarization.types import DiarizationState

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


@dataclass(frozen=True)
class PipelineView:
    """What one connection's pipeline knows at one moment: the input of `transcript_update`."""

    committed: Sequence[Word]
    tentative: Sequence[Word]
    received_s: float
    transcribed_until_s: float
    speech_pending: bool  # audio waits to be transcribed (VAD off, in speech, or a segment end pending)
    vad_silent: bool  # VAD is on, hears no speech, and nothing is tentative
    vad_heard_speech: bool  # VAD is on and has heard speech at some point
    finished: bool
    error: Optional[str]
    diarization: Optional["DiarizationState"] = None
    diarization_done: bool = True


def transcript_update(view: PipelineView, pause_s: float, no_audio_timeout_s: float) -> dict:
    """The full-mode update message for a connection's current state.

    With diarization, only words whose speaker is settled go into `lines`; the rest wait in
    `buffer_diarization`.
    """
    words = list(view.committed)
    buffer_diarization = ""
    diarization_lag_s = 0.0
    if view.diarization is None:
        speakers = [1] * len(words)
    else:
        from whisperlivekit.diarization import assign_speakers

        settled_s = float("inf") if view.diarization_done else view.diarization.processed_s
        labelled = [w for w in words if w.end <= settled_s]
        buffer_diarization = "".join(w.text for w in words[len(labelled):]).strip()
        words = labelled
        speakers = assign_speakers(words, list(view.diarization.segments))
        diarization_lag_s = 0.0 if view.diarization_done else view.received_s - view.diarization.processed_s
    silent_since = (words[-1].end if words else 0.0) if view.vad_silent else None
    lines = build_lines(words, speakers, pause_s, silent_since, float(int(view.received_s)))
    status = "active_transcription"
    if view.error:
        status = "error"
    elif not words and not view.tentative and view.received_s >= no_audio_timeout_s and not view.vad_heard_speech:
        status = "no_audio_detected"
    transcription_lag_s = 0.0
    if not view.finished and view.speech_pending:
        transcription_lag_s = view.received_s - view.transcribed_until_s
    return update_message(
        status=status,
        lines=lines,
        buffer_transcription="".join(w.text for w in view.tentative).strip(),
        buffer_diarization=buffer_diarization,
        remaining_time_transcription=transcription_lag_s,
        remaining_time_diarization=diarization_lag_s,
        error=view.error,
    )


def error_message(error: str) -> dict:
    """Sent before closing on bad input; both fields so old and new clients show it."""
    return {"type": "error", "status": "error", "error": error}


def config_message(use_audio_worklet: bool, gpu_id: Optional[int], device: str, connection_id: str, **extra: object) -> dict:
    return {"type": "config", "useAudioWorklet": use_audio_worklet, "gpu_id": gpu_id, "device": device,
            "connection_id": connection_id, **extra}


READY_TO_STOP = {"type": "ready_to_stop"}
