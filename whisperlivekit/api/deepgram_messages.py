"""Deepgram's `/v1/listen` wire format: query parameters → `ListenOptions`, engine events →
Deepgram's JSON messages. No I/O here (the socket is `api/deepgram.py`), so all of it is unit-tested.
"""

from __future__ import annotations

import string
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, List, Optional, Sequence

from starlette.datastructures import QueryParams

from whisperlivekit.api.errors import deepgram_ending_for
from whisperlivekit.api.params import AUTO, parse_language
from whisperlivekit.asr.types import Word
from whisperlivekit.audio.decode import InputFormat
from whisperlivekit.errors import BadParameters, WhisperLiveKitError
from whisperlivekit.events import BY_FINALIZE, Committed, EngineEvent, Partial, SpeechStarted

CHANNEL = [0, 1]  # Deepgram's `channel_index`: channel 0 of 1
MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 8_000, 48_000
MAX_CHANNELS = 8
_EDGE_PUNCTUATION = string.punctuation + "“”‘’«»…¿¡"


# -- query parameters -----------------------------------------------------------------
@dataclass(frozen=True)
class ListenOptions:
    """One connection's choices, from its query string."""

    input_format: InputFormat
    language: Optional[str]  # None: detect
    interim_results: bool = False
    endpointing: bool = True  # `speech_final=true` when the speaker pauses
    endpointing_s: Optional[float] = None  # the pause asked for (the VAD's own silence is the floor)
    utterance_end_s: Optional[float] = None
    vad_events: bool = False
    diarize: bool = False
    model: str = ""


def _flag(query: QueryParams, name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadParameters(f"{name} must be true or false, not {value!r}")


def _integer(query: QueryParams, name: str, low: int, high: int) -> Optional[int]:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadParameters(f"{name} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise BadParameters(f"{name} must be between {low} and {high}, not {number}")
    return number


def deepgram_language(requested: Optional[str]) -> Optional[str]:
    """Deepgram's tag → ours: `multi` means detection, a region is dropped (`en-US` → `en`)."""
    if requested is None or requested == "":
        return None
    if requested.lower() == "multi":
        return AUTO
    return requested.split("-")[0].lower()


def parse_options(query: QueryParams, default_language: str, languages, model: str) -> ListenOptions:
    """Raises `BadParameters` saying what is allowed."""
    encoding = query.get("encoding")
    channels = _integer(query, "channels", 1, MAX_CHANNELS) or 1
    if encoding in (None, ""):
        input_format = InputFormat(pcm=False)  # a container: ffmpeg finds out what is inside
    elif encoding == "linear16":
        sample_rate = _integer(query, "sample_rate", MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
        if sample_rate is None:
            raise BadParameters("encoding=linear16 needs sample_rate (8000-48000)")
        input_format = InputFormat(pcm=True, sample_rate_hz=sample_rate, channels=channels)
    else:
        raise BadParameters(f"encoding {encoding!r} is not supported: use linear16, or no encoding for "
                            "containerised audio (WebM, Ogg, WAV, MP3, FLAC)")
    if _flag(query, "multichannel", False):
        raise BadParameters("multichannel=true is not supported: channels are mixed to one")
    endpointing_value = query.get("endpointing")
    endpointing, endpointing_ms = True, None
    if endpointing_value not in (None, ""):
        if endpointing_value.lower() == "false":
            endpointing = False
        else:
            endpointing_ms = _integer(query, "endpointing", 0, 60_000)
    utterance_end_ms = _integer(query, "utterance_end_ms", 1, 60_000)
    for accepted in ("punctuate", "smart_format", "numerals", "profanity_filter", "dictation"):
        _flag(query, accepted, False)  # Whisper punctuates and formats anyway
    language = parse_language(deepgram_language(query.get("language")), default_language, languages, model)
    return ListenOptions(
        input_format=input_format,
        language=language,
        interim_results=_flag(query, "interim_results", False),
        endpointing=endpointing,
        endpointing_s=endpointing_ms / 1000 if endpointing_ms else None,
        utterance_end_s=utterance_end_ms / 1000 if utterance_end_ms else None,
        vad_events=_flag(query, "vad_events", False),
        diarize=_flag(query, "diarize", False),
        model=query.get("model") or "",
    )


# -- engine events → Deepgram messages ------------------------------------------------
def _plain(text: str) -> str:
    """Deepgram's `word`: lower case, no surrounding punctuation (`punctuated_word` keeps it)."""
    stripped = text.strip()
    return stripped.strip(_EDGE_PUNCTUATION).lower() or stripped.lower()


class ListenTranslator:
    """Engine events → Deepgram messages for one connection (no I/O, so it is unit-testable).

    Final `Results` tile the audio: each starts where the previous final one ended. A segment
    closed by the VAD (or the end of the stream) sets `speech_final`; one closed by `Finalize`
    sets `from_finalize`. `speakers` gives each word's speaker (0-based) when diarizing.
    """

    def __init__(self, options: ListenOptions, request_id: str, model_name: str,
                 speakers: Optional[Callable[[Sequence[Word]], List[int]]] = None) -> None:
        self.options = options
        self.request_id = request_id
        self.model_name = model_name
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"whisperlivekit:{model_name}"))
        self.speakers = speakers
        self.final_until_s = 0.0
        self.open_since_speech_final = False  # final words sent since the last speech_final
        self.last_word_end_s: Optional[float] = None
        self.words_since_utterance_end = False
        self.tentative: Sequence[Word] = ()

    def on_event(self, event: EngineEvent, received_s: float) -> List[dict]:
        if isinstance(event, Partial):
            return self._partial(event)
        if isinstance(event, Committed):
            return self._committed(event, received_s)
        if isinstance(event, SpeechStarted):
            return [{"type": "SpeechStarted", "channel": CHANNEL, "timestamp": round(event.at_s, 3)}] \
                if self.options.vad_events else []
        return []

    def _partial(self, event: Partial) -> List[dict]:
        self.tentative = event.words
        if event.words:
            self._heard(event.words)
        if not self.options.interim_results or not event.words:
            return []
        end = max(self.final_until_s, event.words[-1].end)
        return [self.results(event.words, self.final_until_s, end, is_final=False)]

    def _committed(self, event: Committed, received_s: float) -> List[dict]:
        words = event.words
        if words:
            self._heard(words)
            self.open_since_speech_final = True
        closes = event.closed_by is not None
        if not words and not (event.closed_by == BY_FINALIZE or (closes and self.open_since_speech_final)):
            return []
        start = self.final_until_s
        end = max(start, words[-1].end if words else start, received_s if closes else start)
        speech_final = closes and event.closed_by != BY_FINALIZE and self.options.endpointing
        if speech_final:
            self.open_since_speech_final = False
        self.final_until_s = end
        return [self.results(words, start, end, is_final=True, speech_final=speech_final,
                             from_finalize=event.closed_by == BY_FINALIZE)]

    def _heard(self, words: Sequence[Word]) -> None:
        self.last_word_end_s = max(self.last_word_end_s or 0.0, words[-1].end)
        self.words_since_utterance_end = True

    def utterance_end(self, received_s: float) -> Optional[dict]:
        """`UtteranceEnd` once `utterance_end_ms` pass after the last word with nothing tentative."""
        gap_s = self.options.utterance_end_s
        if gap_s is None or not self.words_since_utterance_end or self.tentative or self.last_word_end_s is None:
            return None
        if received_s - self.last_word_end_s < gap_s:
            return None
        self.words_since_utterance_end = False
        return {"type": "UtteranceEnd", "channel": CHANNEL, "last_word_end": round(self.last_word_end_s, 3)}

    def results(self, words: Sequence[Word], start_s: float, end_s: float, *, is_final: bool,
                speech_final: bool = False, from_finalize: bool = False) -> dict:
        speakers = self.speakers(words) if self.speakers is not None and words else None
        listed: List[dict] = []
        prefix = ""  # opening punctuation waits for its word
        for i, word in enumerate(words):
            text = word.text.strip()
            if text and not text.strip(_EDGE_PUNCTUATION):  # Whisper gives punctuation its own "word"
                if listed:
                    listed[-1]["punctuated_word"] += text
                else:
                    prefix += text
                continue
            item = {"word": _plain(text), "punctuated_word": prefix + text, "start": round(word.start, 3),
                    "end": round(word.end, 3), "confidence": round(float(word.probability), 4)}
            prefix = ""
            if speakers is not None:
                item["speaker"] = speakers[i]
            listed.append(item)
        confidence = sum(w["confidence"] for w in listed) / len(listed) if listed else 0.0
        message = {
            "type": "Results",
            "channel_index": CHANNEL,
            "duration": round(max(0.0, end_s - start_s), 3),
            "start": round(start_s, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {"alternatives": [{
                "transcript": "".join(w.text for w in words).strip(),
                "confidence": round(confidence, 4),
                "words": listed,
            }]},
            "metadata": {"request_id": self.request_id, "model_uuid": self.model_uuid,
                         "model_info": {"name": self.model_name, "version": "whisperlivekit", "arch": "whisper"}},
        }
        if from_finalize:
            message["from_finalize"] = True
        return message

    def metadata(self, audio_s: float) -> dict:
        return {
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id, "sha256": "",
            "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(audio_s, 3), "channels": 1, "models": [self.model_uuid],
            "model_info": {self.model_uuid: {"name": self.model_name, "version": "whisperlivekit", "arch": "whisper"}},
        }


def error_message(exc: BaseException) -> dict:
    """Deepgram's in-stream error message; a bug's details stay in the log."""
    code = deepgram_ending_for(exc).err_code
    shown = str(exc) if isinstance(exc, WhisperLiveKitError) else "internal error (see the server log)"
    return {"type": "Error", "variant": "error", "code": code, "description": shown, "message": shown}
