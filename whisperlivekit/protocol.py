"""Engine results → the JSON messages of PROTOCOL.md (the only place that knows the wire format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

from whisperlivekit.asr.types import Word

if TYPE_CHECKING:
    from whisperlivekit.diarization.types import DiarizationState

SILENCE_SPEAKER = -2
UNKNOWN_SPEAKER = 0

# update modes (`?mode=`): every update carries all lines, or a snapshot then diffs
FULL = "full"
DIFF = "diff"
MODES = (FULL, DIFF)


def format_time(seconds: float) -> str:
    """`H:MM:SS.cc`, as WhisperLiveKit clients expect."""
    seconds = max(0.0, seconds)
    centis = int(round(seconds * 100))
    hours, centis = divmod(centis, 360_000)
    minutes, centis = divmod(centis, 6_000)
    secs, centis = divmod(centis, 100)
    return f"{hours}:{minutes:02d}:{secs:02d}.{centis:02d}"


def word_json(word: Word) -> dict:
    """One entry of a line's `words`: its text as in the line (leading space kept), times in seconds."""
    return {"text": word.text, "start": round(word.start, 2), "end": round(word.end, 2),
            "probability": round(float(word.probability), 3)}


@dataclass
class Line:
    speaker: int
    start: float
    end: float
    words: List[Word] = field(default_factory=list)

    def to_json(self, detected_language: Optional[str] = None) -> dict:
        """WhisperLiveKit's line: `text` keeps Whisper's leading spaces (its clients join text fields with
        no separator); a silence line has `"text": ""`. Additions old clients ignore: `words`, and
        `detected_language` on speech lines when the language was detected rather than forced."""
        line = {"speaker": self.speaker, "text": "", "start": format_time(self.start), "end": format_time(self.end)}
        if self.speaker == SILENCE_SPEAKER:
            return line
        line["text"] = "".join(w.text for w in self.words)
        if detected_language:
            line["detected_language"] = detected_language
        line["words"] = [word_json(w) for w in self.words]
        return line


LINE_TARGET_S = 10.0  # a line ends at the first sentence end past this length
LINE_MAX_S = 30.0  # ... or at any word past this one (speech that Whisper does not punctuate)
SENTENCE_END = (".", "?", "!", "。", "？", "！")


def _line_is_full(line: Line) -> bool:
    length_s = line.end - line.start
    if length_s >= LINE_MAX_S:
        return True
    return length_s >= LINE_TARGET_S and bool(line.words) and line.words[-1].text.rstrip().endswith(SENTENCE_END)


def build_lines(
    words: Sequence[Word],
    speakers: Sequence[int],
    pause_s: float,
    trailing_silence_from: Optional[float] = None,
    now_s: float = 0.0,
) -> List[Line]:
    """Group committed words into lines: a new line on a speaker change, a silence line on a long pause,
    and a new line of the same speaker after a sentence once a line spans LINE_TARGET_S (at any word past
    LINE_MAX_S). Bounded lines keep a monologue from being one line that grows all session: a
    `?mode=diff` update re-sends the last line, so its size follows the line's, not the session's."""
    lines: List[Line] = []
    previous_end = 0.0
    for word, speaker in zip(words, speakers):
        if word.start - previous_end >= pause_s:
            lines.append(Line(SILENCE_SPEAKER, previous_end, word.start))
        current = lines[-1] if lines else None
        if current is None or current.speaker != speaker or _line_is_full(current):
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


class LineCache:
    """One connection's lines as JSON, kept from one update to the next, so that an update costs
    work for the lines that changed (usually the last one) rather than for every word of the session.

    Committed words never change, except that a policy may extend the last word's text, so a line is
    known by its speaker, times, number of words and last word. Only the lines of the latest update
    are kept. Unchanged lines come back as the same dict objects, so comparing two updates
    (the engine's "changed?" check, `DiffEncoder`) is cheap too.
    """

    def __init__(self) -> None:
        self._json: dict = {}

    def to_json(self, lines: Sequence[Line], detected_language: Optional[str]) -> List[dict]:
        kept: dict = {}
        out = []
        for line in lines:
            key = (line.speaker, line.start, line.end, len(line.words), line.words[-1] if line.words else None,
                   detected_language)
            built = self._json.get(key)
            if built is None:
                built = line.to_json(detected_language)
            kept[key] = built
            out.append(built)
        self._json = kept
        return out


def update_message(
    status: str,
    lines: Sequence[Line],
    buffer_transcription: str,
    buffer_diarization: str,
    remaining_time_transcription: float,
    remaining_time_diarization: float,
    error: Optional[str] = None,
    detected_language: Optional[str] = None,
    cache: Optional[LineCache] = None,
) -> dict:
    message = {
        "status": status,
        "lines": (cache or LineCache()).to_json(lines, detected_language),
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
    detected_language: Optional[str] = None  # set only when the client asked for detection (`auto`)


def transcript_update(view: PipelineView, pause_s: float, no_audio_timeout_s: float,
                      cache: Optional[LineCache] = None) -> dict:
    """The full-mode update message for a connection's current state (`cache`: the connection's
    `LineCache`, so that a long session's update does not rebuild every line).

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
        buffer_diarization = "".join(w.text for w in words[len(labelled):])
        words = labelled
        speakers = assign_speakers(words, list(view.diarization.segments))
        diarization_lag_s = 0.0 if view.diarization_done else view.received_s - view.diarization.processed_s
    silent_since = (words[-1].end if words else 0.0) if view.vad_silent else None
    lines = build_lines(words, speakers, pause_s, silent_since, float(int(view.received_s)))
    status = "active_transcription"
    if view.error:
        status = "error"
    elif not words and not view.tentative and not buffer_diarization and not view.vad_heard_speech \
            and view.received_s >= no_audio_timeout_s:
        status = "no_audio_detected"  # as WhisperLiveKit: nothing to show yet (from the start, by default)
    transcription_lag_s = 0.0
    if not view.finished and view.speech_pending:
        transcription_lag_s = view.received_s - view.transcribed_until_s
    return update_message(
        status=status,
        lines=lines,
        buffer_transcription="".join(w.text for w in view.tentative),
        buffer_diarization=buffer_diarization,
        remaining_time_transcription=transcription_lag_s,
        remaining_time_diarization=diarization_lag_s,
        error=view.error,
        detected_language=view.detected_language,
        cache=cache,
    )


def error_message(error: str) -> dict:
    """Sent before closing on bad input; both fields so old and new clients show it."""
    return {"type": "error", "status": "error", "error": error}


def config_message(use_audio_worklet: bool, gpu_id: Optional[int], device: str, connection_id: str,
                   mode: str = FULL, **extra: object) -> dict:
    return {"type": "config", "useAudioWorklet": use_audio_worklet, "mode": mode, "gpu_id": gpu_id, "device": device,
            "connection_id": connection_id, **extra}


# -- `?mode=diff`: WhisperLiveKit's incremental updates ---------------------------------------

class DiffEncoder:
    """Full updates → WhisperLiveKit's `snapshot` then `diff` messages, so a long session does not
    re-send its whole transcript several times a second.

    A `diff` carries `n_lines` (lines after applying it), `lines_pruned` (lines to drop from the
    front, when any), `new_lines` (lines to append, when any) and the update's other fields. The
    client drops `lines_pruned` lines, keeps the first `n_lines - len(new_lines)`, then appends
    `new_lines`: a line that changed in place (the last line growing) comes again in `new_lines`.
    Computed as WhisperLiveKit's server does, so its clients see the same shapes.
    """

    def __init__(self) -> None:
        self.seq = 0
        self._sent: Optional[List[dict]] = None  # the lines the client holds after the last message

    def encode(self, update: dict) -> dict:
        self.seq += 1
        lines: List[dict] = update["lines"]
        previous, self._sent = self._sent, lines
        if previous is None:
            return {"type": "snapshot", "seq": self.seq, **update}
        message = {"type": "diff", "seq": self.seq, "n_lines": len(lines)}
        message.update((key, value) for key, value in update.items() if key != "lines")
        pruned = _pruned_from_front(previous, lines)
        if pruned:
            message["lines_pruned"] = pruned
        kept = 0
        limit = min(len(previous) - pruned, len(lines))
        while kept < limit and (previous[pruned + kept] is lines[kept] or previous[pruned + kept] == lines[kept]):
            kept += 1
        if kept < len(lines):
            message["new_lines"] = lines[kept:]
        return message


def _pruned_from_front(previous: List[dict], lines: List[dict]) -> int:
    """How many of the client's lines to drop from the front: up to where `lines` starts, or all of
    them when its first line is new (WhisperLiveKit's rule; our lines never leave the front, so it
    is 0, or all when the only line changed)."""
    if not lines:
        return len(previous)
    for index, line in enumerate(previous):
        if line is lines[0] or line == lines[0]:
            return index
    return len(previous)


class WordsDropper:
    """Updates without the lines' `words`, for clients that did not ask for them: in full mode every
    update carries every line, and the words made a 20-minute session's updates 8x larger
    (docs/protocols.md). Unchanged lines (the same dicts, thanks to `LineCache`) are stripped once."""

    def __init__(self) -> None:
        self._stripped: dict = {}  # id(line) → (line, line without words), for the latest update's lines

    def __call__(self, update: dict) -> dict:
        kept, lines = {}, []
        for line in update["lines"]:
            if "words" not in line:
                lines.append(line)
                continue
            pair = self._stripped.get(id(line))
            if pair is None or pair[0] is not line:
                pair = (line, {key: value for key, value in line.items() if key != "words"})
            kept[id(line)] = pair
            lines.append(pair[1])
        self._stripped = kept
        return {**update, "lines": lines}


def update_encoder(mode: str, words: bool) -> Callable[[dict], dict]:
    """What each full update becomes on the wire for a connection in `mode`, with or without `words`."""
    steps: List[Callable[[dict], dict]] = [] if words else [WordsDropper()]
    if mode == DIFF:
        steps.append(DiffEncoder().encode)

    def encode(update: dict) -> dict:
        for step in steps:
            update = step(update)
        return update
    return encode


READY_TO_STOP = {"type": "ready_to_stop"}
