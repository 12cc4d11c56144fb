"""The small vocabulary shared by backends and streaming policies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np

WHISPER_WINDOW_S = 30.0  # the audio Whisper hears at once: no request holds more


@dataclass(frozen=True)
class Word:
    """A recognised word; times in seconds (relative to the request's audio, or absolute once a policy places it)."""

    start: float
    end: float
    text: str
    probability: float = 1.0
    # Where the word's own sound ends, when punctuation joined to it ends later (Whisper times a "." up to
    # the next word's onset): a buffer cut there keeps that onset whole.
    spoken_end: Optional[float] = None

    def shifted(self, offset_s: float) -> "Word":
        spoken_end = None if self.spoken_end is None else self.spoken_end + offset_s
        return Word(self.start + offset_s, self.end + offset_s, self.text, self.probability, spoken_end)

    @property
    def key(self) -> str:
        """The word as the policies compare hypotheses: lower case, without spaces or punctuation
        (punctuation alone has an empty key)."""
        return _NOT_IN_KEY.sub("", self.text.lower())


_NOT_IN_KEY = re.compile(r"[^\w']+")


@dataclass
class TranscribeRequest:
    """One stream's audio buffer to transcribe in one pass.

    `prompt` is committed text that precedes the buffer (context for the decoder);
    `language` None means detect it.
    """

    audio: np.ndarray
    prompt: str = ""
    language: Optional[str] = None
    task: str = "transcribe"
    new_audio_s: Optional[float] = None  # audio not covered by the stream's previous step (the load meter weighs by it)
    prefix: str = ""  # words already committed at the start of this audio: forced as the decoder's prefix, not re-decoded


@dataclass
class TranscribeResult:
    words: List[Word] = field(default_factory=list)
    language: Optional[str] = None
    degenerate: bool = False  # a repetition loop even after the retries: policies ignore it
    decoded_tokens: int = 0  # tokens the model chose for this result (prompt and forced prefix excluded; CTranslate2 still steps through the prefix)
    retried: bool = False  # the degenerate-output retry on the full 30 s window ran for it
    loop_cut: bool = False  # it ran on past its audio in a loop, and the copies were cut instead (degenerate.cut_tail_loop)

    @property
    def text(self) -> str:
        return "".join(w.text for w in self.words).strip()


@dataclass
class AlignAttRequest(TranscribeRequest):
    """One AlignAtt step of one stream (see `simulstreaming.py`).

    The stream's decoder state travels in the request, not in the backend, so
    one shared model serves every connection: `context_tokens` is committed text
    before the buffer (the prompt), `forced_tokens` the words already committed
    for this buffer (decoded again as a fixed prefix).
    """

    context_tokens: Tuple[int, ...] = ()
    forced_tokens: Tuple[int, ...] = ()
    forced_frames: Tuple[int, ...] = ()  # where each forced token attended when it was emitted
    init_prompt: str = ""
    max_context_tokens: int = 128
    frame_threshold: int = 25
    beams: int = 1
    loop_rules: bool = True  # off for one step after repeated stalls, so a false alarm cannot stop a stream


@dataclass
class AlignAttResult(TranscribeResult):
    """What one AlignAtt step decided; word times are relative to the request's audio.

    `words` (inherited) are the words committed this step and `new_tokens` their
    tokens, which the next step forces; `word_starts` indexes `forced_tokens +
    new_tokens` where each new word begins. The last emitted word may still be
    unfinished: with the look-ahead past the stop point it is `tentative`, and its
    tokens are `pending_tokens`, committed only when the voiced segment ends.
    """

    new_tokens: List[int] = field(default_factory=list)
    token_frames: List[int] = field(default_factory=list)  # per forced + new token: the encoder frame it attends to
    word_starts: List[int] = field(default_factory=list)
    tentative: List[Word] = field(default_factory=list)
    pending_tokens: List[int] = field(default_factory=list)
    stop_reason: str = ""  # "alignatt", "eot", "stall", "limit", "final", "no-speech"
    kv_tokens: int = 0  # positions in the step's KV cache at its largest, per beam (freed when the step ends)


class WhisperBackend(Protocol):
    """A Whisper model loaded on one device, shared by that device's connections.

    Called only from the device's worker thread, so implementations need not be
    thread-safe, but they must keep no per-stream state: everything a stream
    needs comes in its `TranscribeRequest`.
    """

    name: str
    device: str
    model_label: str

    def transcribe_batch(self, requests: Sequence[TranscribeRequest]) -> List[TranscribeResult]: ...

    def close(self) -> None: ...

    # Optional: backends that can transcribe whole files also have
    # `transcribe_file(request: FileTranscribeRequest) -> Tuple[FileTranscription, Iterator[FileSegment]]`,
    # whose iterator decodes one 30 s window at a time as it is advanced.


class StreamingPolicy(Protocol):
    """Per-connection streaming state over a shared backend (LocalAgreement-2, AlignAtt, ...).

    The engine appends audio, asks for a request when enough is new, hands the
    device worker's result back, and reads committed/tentative words. All times
    are absolute stream seconds.
    """

    committed: List[Word]
    offset_s: float  # stream time of the first sample still buffered
    language: Optional[str]  # the forced language, or the detected one once known (None before)

    def append_audio(self, samples: np.ndarray) -> None: ...
    def drop_audio_before(self, time_s: float) -> None: ...  # silence the engine will never transcribe
    @property
    def unprocessed_s(self) -> float: ...
    @property
    def transcribed_until_s(self) -> float: ...
    @property
    def tentative(self) -> List[Word]: ...
    def next_request(self) -> TranscribeRequest: ...
    def apply(self, result: TranscribeResult) -> List[Word]: ...  # returns newly committed words
    def heard_speech_end(self, speech_end_s: float) -> bool: ...  # a segment's last step would hear only silence
    # end of a voiced segment (where the VAD heard its speech end) / of the stream: commit the tentative tail
    def finish(self, segment_end_s: Optional[float] = None) -> List[Word]: ...


# -- whole files (POST /v1/audio/transcriptions) ---------------------------------------------


@dataclass
class FileTranscribeRequest:
    """A whole recording, transcribed the way Whisper was trained: 30 s windows, beam search.

    `temperature` None means Whisper's fallback schedule (0.0, then higher when a window
    decodes badly); a number means that one temperature. `prompt` is the initial prompt.
    """

    audio: np.ndarray
    language: Optional[str] = None
    prompt: str = ""
    temperature: Optional[float] = None
    beam_size: int = 5
    word_timestamps: bool = False
    task: str = "transcribe"


@dataclass
class FileSegment:
    """One decoded segment of a file; times in seconds from the file's start."""

    id: int
    start: float
    end: float
    text: str
    words: List[Word] = field(default_factory=list)
    tokens: List[int] = field(default_factory=list)
    seek: int = 0
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class FileTranscription:
    """What is known before the first segment: the language and the audio's length."""

    language: str
    duration_s: float
