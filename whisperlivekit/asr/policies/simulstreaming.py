"""SimulStreaming: AlignAtt simultaneous decoding, one state per connection.

Each step decodes the audio buffer once, with the words already committed for
it forced as a prefix, and emits new tokens until the alignment heads'
cross-attention for the next token falls within `frame_threshold` encoder frames
(20 ms each) of the end of the buffer: that token's audio may still be arriving,
so it waits for the next step. What was emitted is committed at once, nothing is
re-transcribed or voted on as in LocalAgreement, with two exceptions: the last
emitted word may be unfinished ("bir" of "birch", or a guess from the onset of a
word), so it stays tentative and is decoded again by the next step; and a word
that is a cut-short version of what the previous step showed at its place waits
one step (`_revised_from`). Measured on Harvard at 0.3-0.55 s steps: a step heard
" canoe slid", the next decoded " can" "o" " slid" and committed "cano" (3 of 12
random step patterns on its first 4 s).

The buffer holds at most `audio_max_len_s` seconds, and its committed tokens
must leave the decoder (448 positions) room for the prompt and a step's new
tokens. Past either limit it is cut at the start of a committed word; the tokens
before the cut join the context, the committed text given to the decoder as a
prompt, of which only the last `max_context_tokens` (after the fixed
`init_prompt`) are kept. So a stream's state (audio, tokens, context) stays
bounded however long it runs; the KV cache lives only inside a step
(`alignatt_backend.py`).

The tentative tail shown to the user is that last word plus the backend's
greedy look-ahead past the stop point; it commits when the voiced segment or the
stream ends (`finish`), which needs no further model call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from whisperlivekit.asr.types import WHISPER_WINDOW_S, AlignAttRequest, AlignAttResult, TranscribeResult, Word
from whisperlivekit.audio import SAMPLE_RATE

FRAME_S = 0.02
SAMPLES_PER_FRAME = 320
STALLS_BEFORE_RELAXING = 2  # steps in a row stopped by a loop rule with nothing new
CUT_MARGIN_FRAMES = 5  # a word's attention peak lies a little after its onset: cut just before it
MAX_EXTRA_CUT_FRAMES = 50  # never cut more than 1 s past the excess: a wrong frame must not drop unheard audio
TEXT_CONTEXT = 448  # Whisper decoder positions (every model size)
NEW_TOKENS_ROOM = 96  # positions kept free for a step's new and look-ahead tokens


@dataclass
class SimulStreamingState:
    """What one stream's decoder carries from step to step."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    offset_s: float = 0.0  # stream time of audio[0]
    tokens: List[int] = field(default_factory=list)  # committed for this buffer: the next step's forced prefix
    token_frames: List[int] = field(default_factory=list)  # encoder frame (from audio[0]) each token attends to
    word_starts: List[int] = field(default_factory=list)  # indices in `tokens` where words begin: the cut points
    pending: List[int] = field(default_factory=list)  # tokens of the tentative tail, committed by `finish`
    context: List[int] = field(default_factory=list)  # committed tokens before the buffer, newest last
    language: Optional[str] = None

    def sizes(self) -> dict:
        """How big the state is (the long-stream test checks these stop growing)."""
        return {
            "audio_samples": int(len(self.audio)), "tokens": len(self.tokens),
            "word_starts": len(self.word_starts), "pending": len(self.pending), "context": len(self.context),
        }

    def retire(self, count: int, cut_frame: int, max_context: int) -> None:
        """Move the first `count` tokens to the context and re-base the rest on a buffer cut at `cut_frame`."""
        self.context = (self.context + self.tokens[:count])[-max_context:] if max_context > 0 else []
        self.tokens = self.tokens[count:]
        self.token_frames = [max(0, f - cut_frame) for f in self.token_frames[count:]]
        self.word_starts = [s - count for s in self.word_starts if s >= count]


class SimulStreamingPolicy:
    """Per-connection AlignAtt streaming over a shared `AlignAttBackend` (the StreamingPolicy interface)."""

    @classmethod
    def from_settings(cls, settings, language: Optional[str]) -> "SimulStreamingPolicy":
        return cls(
            frame_threshold=settings.frame_threshold, audio_max_len_s=settings.audio_max_len_s,
            max_context_tokens=settings.max_context_tokens, beams=settings.beam_size, init_prompt=settings.init_prompt,
            language=language, task=settings.task,
        )

    def __init__(
        self,
        frame_threshold: int = 25,
        audio_max_len_s: float = 30.0,
        max_context_tokens: int = 128,
        beams: int = 1,
        init_prompt: Optional[str] = None,
        language: Optional[str] = None,
        task: str = "transcribe",
    ) -> None:
        self.frame_threshold = frame_threshold
        self.audio_max_len_s = min(audio_max_len_s, WHISPER_WINDOW_S)
        self.max_context_tokens = max_context_tokens
        self.max_forced_tokens = max(32, TEXT_CONTEXT - NEW_TOKENS_ROOM - 5 - max(0, max_context_tokens))
        self.beams = beams
        self.init_prompt = init_prompt or ""
        self.task = task
        self.state = SimulStreamingState(language=language)
        self.committed: List[Word] = []
        self.processed_samples = 0  # how much of the buffer the last request covered
        self._tentative: List[Word] = []
        self._request: Optional[AlignAttRequest] = None
        self._request_offset_s = 0.0
        self._deferred_drop_s: Optional[float] = None
        self._stalls = 0

    # -- audio in --------------------------------------------------------------------
    @property
    def language(self) -> Optional[str]:
        """The forced language, or the detected one once detected (None before)."""
        return self.state.language

    @property
    def offset_s(self) -> float:
        return self.state.offset_s

    def append_audio(self, samples: np.ndarray) -> None:
        self.state.audio = np.concatenate([self.state.audio, samples.astype(np.float32, copy=False)])

    def drop_audio_before(self, time_s: float) -> None:
        """Forget silence before `time_s`; while a step is in flight, after it (its tokens refer to this buffer)."""
        if self._request is not None:
            self._deferred_drop_s = max(time_s, self._deferred_drop_s or 0.0)
            return
        cut_frame = int((time_s - self.state.offset_s) / FRAME_S)
        if cut_frame <= 0:
            return
        state = self.state
        boundaries = {0, len(state.tokens), *state.word_starts}
        count = max(b for b in boundaries if b == 0 or state.token_frames[b - 1] < cut_frame)
        self._cut(cut_frame * SAMPLES_PER_FRAME, count)

    def _cut(self, cut: int, count: int) -> None:
        """Drop the first `cut` samples and retire the first `count` tokens into the context."""
        cut = min(len(self.state.audio), cut)
        self.state.retire(count, cut // SAMPLES_PER_FRAME, self.max_context_tokens)
        self.state.audio = self.state.audio[cut:]
        self.state.offset_s += cut / SAMPLE_RATE
        self.processed_samples = max(0, self.processed_samples - cut)

    @property
    def buffer_s(self) -> float:
        return len(self.state.audio) / SAMPLE_RATE

    @property
    def unprocessed_s(self) -> float:
        return (len(self.state.audio) - self.processed_samples) / SAMPLE_RATE

    @property
    def transcribed_until_s(self) -> float:
        return self.state.offset_s + self.processed_samples / SAMPLE_RATE

    @property
    def tentative(self) -> List[Word]:
        return list(self._tentative)

    # -- one step --------------------------------------------------------------------
    def _trim(self) -> None:
        """Keep the buffer within `audio_max_len_s` and its tokens within budget: cut at the first committed
        word start past both excesses (the words before it join the context)."""
        state = self.state
        excess_frames = int(np.ceil((self.buffer_s - self.audio_max_len_s) / FRAME_S))
        excess_tokens = len(state.tokens) - self.max_forced_tokens
        if excess_frames <= 0 and excess_tokens <= 0:
            return
        starts = [
            s for s in state.word_starts
            if max(1, excess_tokens) <= s < len(state.tokens) and state.token_frames[s] >= excess_frames
        ]
        if starts:
            count = min(starts)
            cut_frame = min(max(excess_frames, state.token_frames[count] - CUT_MARGIN_FRAMES),
                            max(0, excess_frames) + MAX_EXTRA_CUT_FRAMES)
        else:  # no committed word starts late enough (noise, a long pause): cut anyway
            count = len(state.tokens)
            cut_frame = max(excess_frames, state.token_frames[-1] + 1 if state.tokens else 0)
        self._cut(max(0, cut_frame) * SAMPLES_PER_FRAME, count)

    def next_request(self) -> AlignAttRequest:
        self._trim()
        state = self.state
        self.processed_samples = len(state.audio)
        self._request_offset_s = state.offset_s
        self._request = AlignAttRequest(
            audio=state.audio.copy(), language=state.language, task=self.task,
            context_tokens=tuple(state.context), forced_tokens=tuple(state.tokens), forced_frames=tuple(state.token_frames),
            init_prompt=self.init_prompt, max_context_tokens=self.max_context_tokens,
            frame_threshold=self.frame_threshold, beams=self.beams,
            loop_rules=self._stalls < STALLS_BEFORE_RELAXING,  # a false alarm must not stop the stream for good
        )
        return self._request

    def apply(self, result: TranscribeResult) -> List[Word]:
        """Commit what the step emitted; returns the words it completed."""
        request, self._request = self._request, None
        try:
            if not isinstance(result, AlignAttResult) or request is None:
                raise TypeError("SimulStreamingPolicy needs the AlignAtt backend (--backend simulstreaming)")
            if self.state.language is None and result.language and (result.words or result.tentative):
                self.state.language = result.language  # detected on speech, not on leading silence
            self._stalls = self._stalls + 1 if result.stop_reason == "stall" and not result.new_tokens else 0
            if result.degenerate:
                return []
            state = self.state
            forced = len(request.forced_tokens)
            words = [w.shifted(self._request_offset_s) for w in result.words]
            tentative = [w.shifted(self._request_offset_s) for w in result.tentative]
            held = self._revised_from(words)
            cut = result.word_starts[held] if held < len(words) else forced + len(result.new_tokens)
            # Frames as measured when each token was emitted (and passed the stop rule): steadier than the
            # forced prefix re-aligned under a long buffer, and they decide where the buffer is cut.
            state.tokens = list(request.forced_tokens) + result.new_tokens[: cut - forced]
            state.token_frames = state.token_frames[:forced] + result.token_frames[forced:cut]
            state.word_starts = [s for s in state.word_starts if s < forced] + result.word_starts[:held]
            state.pending = result.new_tokens[cut - forced:] + list(result.pending_tokens)
            words, tentative = words[:held], words[held:] + tentative
            self._publish(words)
            self._tentative = tentative
            return words
        finally:
            if self._deferred_drop_s is not None and self._request is None:
                drop, self._deferred_drop_s = self._deferred_drop_s, None
                self.drop_audio_before(drop)

    def _revised_from(self, words: List[Word]) -> int:
        """Index of the first of this step's complete words that is a cut-short version of the word
        the previous step showed at its place (len(words) if none is). The previous step's tentative
        tail starts where this step's emission starts (the forced prefix is what was committed), so
        they align word by word. "canoe" then "cano" is the signature of a word cut off: it is held
        until a step repeats it. Any other revision ("bitch" then "birch") commits at once: holding
        every revision for a step cost 0.67 s of commit-lag p95 at 1 s steps (1.71 -> 2.38 s)."""
        for i, (word, before) in enumerate(zip(words, self._tentative)):
            now, then = word.key, before.key
            if now and now != then and then.startswith(now):  # (punctuation alone has no key)
                return i
        return len(words)

    def _publish(self, words: List[Word]) -> None:
        """Append committed words; punctuation alone (a "." decoded after a word committed earlier) joins the
        word before it: it has no sound, and its own attention time could open a new line after a pause."""
        for word in words:
            if self.committed and not any(c.isalnum() for c in word.text):
                last = self.committed[-1]
                self.committed[-1] = Word(last.start, last.end, last.text + word.text.strip(), last.probability)
            else:
                self.committed.append(word)

    def heard_speech_end(self, speech_end_s: float) -> bool:
        """Never: a step stops decoding `frame_threshold` frames before its audio's end, so a segment's last
        step still decodes the speech just before the VAD's end."""
        return False

    def finish(self, segment_end_s: Optional[float] = None) -> List[Word]:
        """End of a voiced segment or of the stream: commit the tentative tail and start a new buffer.

        `segment_end_s` (the VAD's end of speech) is taken for the policies' common interface and not used:
        AlignAtt's tentative tail is the few tokens its attention has not passed yet. Whether a late step's
        tail reaches into the next utterance, as LocalAgreement's did, is not measured."""
        words, self._tentative = self._tentative, []
        self._publish(words)
        state = self.state
        state.tokens, state.pending = state.tokens + state.pending, []
        state.token_frames = state.token_frames + [0] * (len(state.tokens) - len(state.token_frames))
        self._cut(self.processed_samples, len(state.tokens))
        return words
