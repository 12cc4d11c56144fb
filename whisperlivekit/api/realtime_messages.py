"""OpenAI Realtime transcription's wire format: client `session.update` events → `SessionConfig`,
engine events → server events. No I/O here (the socket is `api/realtime.py`), so all of it is
unit-tested.

Two shapes of the session are accepted: the current one (`session.update` with
`session.type="transcription"` and `session.audio.input.{format, transcription, turn_detection}`)
and the older one the SDK still types (`transcription_session.update` with `input_audio_format`,
`input_audio_transcription`, `turn_detection`). The server answers in the shape it was asked in.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Deque, Dict, List, Optional, Tuple

from whisperlivekit.errors import BadEvent, BadParameters
from whisperlivekit.events import BY_END, BY_FINALIZE, BY_VAD, Committed, EngineEvent, SpeechStarted, SpeechStopped

PCM_RATES_HZ = (16_000, 24_000)  # `audio/pcm` rates served; 24 kHz is OpenAI's (and the default)
LEGACY_FORMATS_HZ = {"pcm16": 24_000}  # the older shape's names
DEFAULT_MODEL = "whisper-1"  # echoed back when the client names none; the server's model answers anyway
CONTENT_INDEX = 0

CLIENT_EVENTS = (
    "session.update", "transcription_session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# -- the session ------------------------------------------------------------------------
@dataclass(frozen=True)
class TurnDetection:
    """`server_vad` settings; the engine's VAD does the listening."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def as_dict(self) -> dict:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms}


@dataclass(frozen=True)
class SessionConfig:
    """One connection's transcription session as the client configured it."""

    rate_hz: int = 24_000
    language: Optional[str] = None  # as the client asked; None: the server's default
    model: str = DEFAULT_MODEL
    prompt: str = ""
    turn_detection: Optional[TurnDetection] = TurnDetection()  # None: the client commits by hand
    legacy: bool = False  # the client spoke `transcription_session.*`


def _object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise BadEvent(f"{param} must be an object", param=param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadParameters(f"{param} must be a number from {low:g} to {high:g}, not {value!r}")
    return value


def _turn_detection(value: Any, current: Optional[TurnDetection], param: str) -> Optional[TurnDetection]:
    if value is None:
        return None
    value = _object(value, param)
    kind = value.get("type", "server_vad")
    if kind != "server_vad":
        raise BadParameters(f"{param}.type {kind!r} is not supported: use server_vad, or null to commit by hand")
    base = current or TurnDetection()
    threshold = value.get("threshold", base.threshold)
    padding = value.get("prefix_padding_ms", base.prefix_padding_ms)
    silence = value.get("silence_duration_ms", base.silence_duration_ms)
    return TurnDetection(
        threshold=float(_number(threshold, f"{param}.threshold", 0.0, 1.0)),
        prefix_padding_ms=int(_number(padding, f"{param}.prefix_padding_ms", 0, 10_000)),
        silence_duration_ms=int(_number(silence, f"{param}.silence_duration_ms", 0, 60_000)),
    )


def _transcription(config: SessionConfig, value: Any, param: str) -> SessionConfig:
    if value is None:
        return config
    value = _object(value, param)
    language = value.get("language", config.language)
    if language is not None and not isinstance(language, str):
        raise BadParameters(f"{param}.language must be a string")
    prompt = value.get("prompt") or config.prompt
    return replace(config, language=language or None, model=str(value.get("model") or config.model),
                   prompt=str(prompt))


def _pcm_rate(value: Any, param: str) -> int:
    value = _object(value, param)
    if value.get("type") != "audio/pcm":
        raise BadParameters(f"{param}.type {value.get('type')!r} is not supported: use audio/pcm (16-bit PCM)")
    rate = value.get("rate", 24_000)
    if rate not in PCM_RATES_HZ:
        raise BadParameters(f"{param}.rate {rate!r} is not supported: use one of {', '.join(map(str, PCM_RATES_HZ))}")
    return int(rate)


def apply_update(config: SessionConfig, event: dict) -> SessionConfig:
    """The session after a `session.update` or `transcription_session.update`; raises `BadEvent`
    (malformed) or `BadParameters` (well-formed but unsupported), and the session stays as it was."""
    session = _object(event.get("session"), "session")
    if event["type"] == "transcription_session.update":
        return _apply_legacy(config, session)
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise BadParameters(f"session.type {kind!r} is not supported: this server serves transcription sessions")
    updated = replace(config, legacy=False)
    audio_input = _object(_object(session.get("audio", {}), "session.audio").get("input", {}), "session.audio.input")
    if "format" in audio_input:
        updated = replace(updated, rate_hz=_pcm_rate(audio_input["format"], "session.audio.input.format"))
    updated = _transcription(updated, audio_input.get("transcription"), "session.audio.input.transcription")
    if "turn_detection" in audio_input:
        updated = replace(updated, turn_detection=_turn_detection(
            audio_input["turn_detection"], config.turn_detection, "session.audio.input.turn_detection"))
    return updated


def _apply_legacy(config: SessionConfig, session: dict) -> SessionConfig:
    updated = replace(config, legacy=True)
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        if name not in LEGACY_FORMATS_HZ:
            raise BadParameters(f"session.input_audio_format {name!r} is not supported: use pcm16")
        updated = replace(updated, rate_hz=LEGACY_FORMATS_HZ[name])
    updated = _transcription(updated, session.get("input_audio_transcription"), "session.input_audio_transcription")
    if "turn_detection" in session:
        updated = replace(updated, turn_detection=_turn_detection(
            session["turn_detection"], config.turn_detection, "session.turn_detection"))
    return updated


def session_object(config: SessionConfig, session_id: str, language: Optional[str]) -> dict:
    """The session as the server reports it, in the shape the client used; `language`: the one in force."""
    turn = config.turn_detection.as_dict() if config.turn_detection is not None else None
    transcription = {"model": config.model, "language": language, "prompt": config.prompt}
    if config.legacy:
        return {"id": session_id, "object": "realtime.transcription_session", "modalities": ["text"],
                "input_audio_format": "pcm16" if config.rate_hz == 24_000 else f"pcm16_{config.rate_hz}",
                "input_audio_transcription": transcription, "turn_detection": turn,
                "input_audio_noise_reduction": None, "include": None}
    return {"type": "transcription", "id": session_id, "object": "realtime.transcription_session",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": config.rate_hz}, "transcription": transcription,
                                "turn_detection": turn, "noise_reduction": None}},
            "include": None}


# -- client events ----------------------------------------------------------------------
def parse_event(text: str) -> dict:
    """A client event as a dict with a known string `type`; raises `BadEvent`."""
    try:
        event = json.loads(text)
    except ValueError:
        raise BadEvent("The event is not valid JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise BadEvent("An event must be a JSON object with a string `type`", param="type")
    if event["type"] not in CLIENT_EVENTS:
        raise BadEvent(f"Unsupported event type {event['type'][:60]!r}: this server handles "
                       + ", ".join(CLIENT_EVENTS), param="type")
    return event


def audio_of(event: dict) -> bytes:
    """The PCM16 bytes of an `input_audio_buffer.append`; raises `BadEvent`."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise BadEvent("input_audio_buffer.append needs `audio`: base64-encoded 16-bit PCM", param="audio")
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise BadEvent("`audio` is not valid base64", param="audio") from None
    if len(data) % 2:
        raise BadEvent("`audio` must hold whole 16-bit samples (an even number of bytes)", param="audio")
    return data


def error_event(error: dict) -> dict:
    return {"type": "error", "event_id": new_id("event"), "error": error}


# -- engine events → server events ------------------------------------------------------
class RealtimeTranslator:
    """Engine events → OpenAI Realtime events for one connection (no I/O, so it is unit-testable).

    Each turn is one conversation item. Under server VAD the engine's VAD opens it
    (`speech_started`) and closes it (`speech_stopped`, then `committed`); with turn detection
    off only the client's `input_audio_buffer.commit` closes it. Committed words become `delta`s
    of the item they belong to, and the segment end that follows a close gives its `completed`.
    """

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.open_item: Optional[str] = None  # the turn words go to now
        self.closing: Deque[str] = deque()  # turns committed, their transcript not yet complete
        self.transcripts: Dict[str, str] = {}
        self.spans: Dict[str, Tuple[float, float]] = {}  # per turn: (first word's start, last word's end) in s
        self.last_item: Optional[str] = None  # `previous_item_id` of the next committed turn
        self.discarding = False  # after `clear`: words of the cleared audio are dropped

    @property
    def server_vad(self) -> bool:
        return self.config.turn_detection is not None

    def _event(self, kind: str, **fields: Any) -> dict:
        return {"type": kind, "event_id": new_id("event"), **fields}

    def _open(self) -> str:
        if self.open_item is None:
            self.open_item = new_id("item")
            self.transcripts[self.open_item] = ""
        return self.open_item

    def commit(self) -> dict:
        """The open turn is committed (by the client, or at the end of the stream)."""
        item = self._open()
        self.open_item = None
        self.closing.append(item)
        previous, self.last_item = self.last_item, item
        return self._event("input_audio_buffer.committed", item_id=item, previous_item_id=previous)

    def clear(self) -> None:
        """Forget the open turn: the words of its audio still to come are dropped."""
        if self.open_item is not None:
            self.transcripts.pop(self.open_item, None)
            self.spans.pop(self.open_item, None)
            self.open_item = None
        self.discarding = True

    def on_event(self, event: EngineEvent) -> List[dict]:
        if isinstance(event, SpeechStarted):
            if not self.server_vad:
                return []
            start_ms = max(0, round(event.at_s * 1000) - self.config.turn_detection.prefix_padding_ms)
            return [self._event("input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self._open())]
        if isinstance(event, SpeechStopped):
            if not self.server_vad:
                return []
            stopped = self._event("input_audio_buffer.speech_stopped", audio_end_ms=round(event.at_s * 1000),
                                  item_id=self._open())
            return [stopped, self.commit()]
        if isinstance(event, Committed):
            return self._committed(event)
        return []

    def _committed(self, event: Committed) -> List[dict]:
        out: List[dict] = []
        text = "".join(word.text for word in event.words)
        if self.discarding:
            text = ""
            if event.closed_by is not None:
                self.discarding = False
        if text:
            item = self.closing[0] if self.closing else self._open()
            self.transcripts[item] += text
            start_s, end_s = self.spans.get(item, (event.words[0].start, event.words[-1].end))
            self.spans[item] = (min(start_s, event.words[0].start), max(end_s, event.words[-1].end))
            out.append(self._event("conversation.item.input_audio_transcription.delta", item_id=item,
                                   content_index=CONTENT_INDEX, delta=text))
        ends_turns = event.closed_by in (BY_FINALIZE, BY_END) or (event.closed_by == BY_VAD and self.server_vad)
        if event.closed_by == BY_END and self.open_item is not None:
            out.append(self.commit())  # the stream ended mid-turn: what was heard is the turn
        if ends_turns:
            while self.closing:
                out.append(self._completed(self.closing.popleft()))
        return out

    def _completed(self, item: str) -> dict:
        transcript = self.transcripts.pop(item, "").strip()
        start_s, end_s = self.spans.pop(item, (0.0, 0.0))
        return self._event("conversation.item.input_audio_transcription.completed", item_id=item,
                           content_index=CONTENT_INDEX, transcript=transcript,
                           usage={"type": "duration", "seconds": round(end_s - start_s, 3)})
