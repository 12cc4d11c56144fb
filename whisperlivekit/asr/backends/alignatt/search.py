"""The token search of one AlignAtt step: emit until a stop rule fires, then look ahead.

Greedy with `beams` = 1, beam search otherwise. The rules read the attention of
the decoder position that predicts the candidate (a property of the position,
not of the candidate token):

- end-of-text: the model has nothing more to say about this audio;
- AlignAtt: the position attends within `frame_threshold` frames of the end of
  the audio, so the candidate's sound may not be complete; it waits;
- repeat: the candidate repeats one of the last few words (compared as letters,
  so "Hello", " hello" and "hello," are one word) while attention has stayed
  put for two words: how Whisper's loops look ("Hello. Hello. Hello." all at one
  frame). Neither sign is enough alone: in "easy to tell" two short words can
  peak at the same frame, and "the" recurs every few words. The repeated word is ruled out at this
  position and the next candidate tried, a few times, before stopping: the
  forced prefix may hold the start of the loop, which would stall every step;
- start over: two words in a row attend more than a second before the last word
  that did not (measured on a phone call: "I didn't know you were there. I did
  not know you were there."); the hypothesis is cut where that began. One word
  alone says nothing: a position's attention can land on a "sink" early in the
  window (measured: frame 9) while the right next word is predicted;
- token cap: more tokens than speech can hold, a loop the other rules missed.

Past an AlignAtt stop, a greedy look-ahead continues to end-of-text: the text of
the last half second, shown as tentative, committed only at the segment's end.
Two words in a row attending well before the stop point mean it started over
(measured on a phone call: "...design. Okay. Hello. Hello. I didn't know..."):
it is cut where that began.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from whisperlivekit.asr.backends.alignatt.decoder import AlignAttDecoder
from whisperlivekit.asr.backends.torch_whisper.model import DecoderState

PEAK_MARGIN_FRAMES = 25
PAST_END_FRAMES = 10  # a token attending this far past the audio is made up, not heard
RECENT_WORDS = 4
STALL_RETRIES = 4
BACKTRACK_FRAMES = 50


def peak(alignment: torch.Tensor, content_frames: int) -> torch.Tensor:
    """The frame the alignment heads look at most, within the audio or just past it.

    Farther into the padding, a window shorter than 30 s has an attention sink near
    its end (measured: tiny.en looked at frame 470 of a 500-frame window while the
    word was at frame 155); it says nothing about where the next token's audio is.
    """
    return alignment[..., : content_frames + PEAK_MARGIN_FRAMES].argmax(-1)


@dataclass
class SearchSetup:
    """What stays fixed during one step's search."""

    decoder: AlignAttDecoder
    suppress: torch.Tensor  # bool per vocabulary entry: never emitted
    blank: List[int]  # never the first token of a transcript: blank, punctuation
    eot: int
    starts_word: Optional[np.ndarray]  # bool per token (leading space); None where words have no spaces
    word_keys: Optional[Sequence[str]]  # lowercase letters and digits of each token; None: no repeat rule
    content_frames: int
    stop_frame: Optional[int]  # None: a final decode, no AlignAtt stop
    max_new: int
    beams: int = 1
    loop_rules: bool = True  # the repeat and start-over rules (the policy lifts them after stalls in a row)

    def starts_a_word(self, token: int) -> bool:
        return self.starts_word is None or bool(self.starts_word[token])

    def key(self, token: int) -> str:
        return self.word_keys[token] if self.word_keys is not None and token < len(self.word_keys) else ""


@dataclass(frozen=True)
class WordTrail:
    """The last few words (as keys) and where each attended: what the stall rules compare."""

    keys: Tuple[str, ...] = ()
    frames: Tuple[int, ...] = ()
    anchor: int = -1  # frame of the last word that did not go back

    def after(self, token: int, frame: int, setup: SearchSetup) -> "WordTrail":
        if not setup.starts_a_word(token):
            return self
        key = setup.key(token)
        return WordTrail(
            (self.keys + (key,))[-RECENT_WORDS:] if key else self.keys, (self.frames + (frame,))[-2:],
            self.anchor if self.goes_back(frame) else frame,
        )

    def goes_back(self, frame: int) -> bool:
        return self.anchor >= 0 and frame < self.anchor - BACKTRACK_FRAMES

    def repeats(self, token: int, frame: int, setup: SearchSetup) -> bool:
        if not setup.loop_rules:
            return False
        key = setup.key(token)
        stuck = len(self.frames) == 2 and frame <= self.frames[-1] <= self.frames[-2]
        return bool(key) and stuck and key in self.keys


@dataclass
class _Hypothesis:
    tokens: List[int] = field(default_factory=list)
    frames: List[int] = field(default_factory=list)
    score: float = 0.0
    words: WordTrail = field(default_factory=WordTrail)
    back_from: int = -1  # index of the first of the words in a row that went back
    logprobs: List[float] = field(default_factory=list)  # per token: how sure the model was of it

    def extended(self, token: int, frame: int, score: float, setup: SearchSetup) -> "_Hypothesis":
        back_from = self.back_from
        if setup.starts_a_word(token):
            back_from = (len(self.tokens) if back_from < 0 else back_from) if self.words.goes_back(frame) else -1
        return _Hypothesis(self.tokens + [token], self.frames + [frame], score, self.words.after(token, frame, setup),
                           back_from, self.logprobs + [score - self.score])

    def starts_over(self, token: int, frame: int, setup: SearchSetup) -> bool:
        return setup.loop_rules and self.back_from >= 0 and setup.starts_a_word(token) and self.words.goes_back(frame)


@dataclass
class SearchOutcome:
    tokens: List[int]
    frames: List[int]
    score: float
    reason: str  # "eot", "alignatt", "stall", "limit", "final"
    lookahead: List[int] = field(default_factory=list)
    lookahead_frames: List[int] = field(default_factory=list)
    logprobs: List[float] = field(default_factory=list)  # per token of `tokens`
    lookahead_logprobs: List[float] = field(default_factory=list)  # per token of `lookahead`

    @property
    def lookahead_score(self) -> float:
        """Summed log-probability of the look-ahead tokens."""
        return sum(self.lookahead_logprobs)


def _logprobs(setup: SearchSetup, logits: torch.Tensor, at_start: bool) -> torch.Tensor:
    logits = logits.float().masked_fill(setup.suppress, float("-inf"))
    if at_start:
        logits[:, setup.blank] = float("-inf")
    return logits.log_softmax(-1)


def search(setup: SearchSetup, logits: torch.Tensor, frame: int, trail: WordTrail, cache: DecoderState,
           at_start: bool) -> SearchOutcome:
    """Decode from the prefilled `cache` (`logits`/`frame`: its last position's prediction and attention;
    `trail`: the forced words')."""
    hyps, frames = [_Hypothesis(words=trail)], [frame]
    device = logits.device
    while True:
        logprobs = _logprobs(setup, logits, at_start and not hyps[0].tokens)
        scores = torch.tensor([h.score for h in hyps], device=device)
        flat = (scores[:, None] + logprobs).flatten()
        vocab = logprobs.shape[-1]
        for _ in range(STALL_RETRIES + 1):
            top = flat.topk(min(2 * setup.beams, flat.numel()))
            source, token = divmod(int(top.indices[0]), vocab)
            best, at = hyps[source], frames[source]
            if not best.words.repeats(token, at, setup):
                break
            flat[top.indices[0]] = float("-inf")  # the loop's next word: try what comes after it instead

        def done(reason: str, ahead: Tuple[List[int], List[int], List[float]] = ([], [], [])) -> SearchOutcome:
            tokens, frames, logprobs = ahead
            return SearchOutcome(best.tokens, best.frames, best.score, reason, tokens, frames,
                                 logprobs=best.logprobs, lookahead_logprobs=logprobs)

        if token == setup.eot:
            return done("eot")
        if best.words.repeats(token, at, setup):
            return done("stall")
        if best.starts_over(token, at, setup):
            cut = best.back_from
            return SearchOutcome(best.tokens[:cut], best.frames[:cut], best.score, "stall", logprobs=best.logprobs[:cut])
        if setup.stop_frame is not None and at >= setup.stop_frame:
            one = cache.select(torch.tensor([source], device=device))
            first = float(top.values[0]) - best.score
            return done("alignatt", _lookahead(setup, token, at, first, best.words, one, setup.max_new - len(best.tokens)))
        if setup.stop_frame is None and at >= setup.content_frames + PAST_END_FRAMES:
            return done("final")
        if len(best.tokens) >= setup.max_new:
            return done("limit")
        chosen = [
            (i // vocab, i % vocab, v) for v, i in zip(top.values.tolist(), top.indices.tolist())
            if i % vocab != setup.eot and not hyps[i // vocab].words.repeats(i % vocab, frames[i // vocab], setup)
        ][: setup.beams]
        hyps = [hyps[b].extended(t, frames[b], v, setup) for b, t, v in chosen]
        sources = torch.tensor([b for b, _, _ in chosen], device=device)
        step_logits, alignment, cache = setup.decoder.forward(
            torch.tensor([[t] for _, t, _ in chosen], device=device), cache.select(sources)
        )
        logits, frames = step_logits[:, -1], peak(alignment[:, -1], setup.content_frames).tolist()


def _lookahead(setup: SearchSetup, token: int, frame: int, logprob: float, trail: WordTrail, cache: DecoderState,
               budget: int) -> Tuple[List[int], List[int], List[float]]:
    """Greedy tokens past the stop point, to show what is being said; never committed by the step.
    Returns them with their frames and log-probabilities."""
    tokens: List[int] = []
    frames: List[int] = []
    logprobs_taken: List[float] = []
    device: Any = cache.keys[0].device
    floor = frame - PEAK_MARGIN_FRAMES
    went_back: Optional[int] = None  # index of the first of consecutive words attending before `floor`
    while token != setup.eot and len(tokens) < budget and frame < setup.content_frames + PAST_END_FRAMES:
        if trail.repeats(token, frame, setup):
            break
        if setup.starts_a_word(token):
            if frame >= floor:
                went_back = None
            elif went_back is None:
                went_back = len(tokens)
            else:
                return tokens[:went_back], frames[:went_back], logprobs_taken[:went_back]
        trail = trail.after(token, frame, setup)
        tokens.append(token)
        frames.append(frame)
        logprobs_taken.append(logprob)
        logits, alignment, cache = setup.decoder.forward(torch.tensor([[token]], device=device), cache)
        frame = int(peak(alignment[0, -1], setup.content_frames))
        logprobs = _logprobs(setup, logits[:, -1], False)[0]
        ranked = logprobs.topk(STALL_RETRIES + 1).indices.tolist()
        token = next((t for t in ranked if not trail.repeats(t, frame, setup)), ranked[0])
        logprob = float(logprobs[token])
    return tokens, frames, logprobs_taken
