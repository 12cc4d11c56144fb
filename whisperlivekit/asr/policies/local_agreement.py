"""LocalAgreement-2: commit what two consecutive hypotheses agree on.

The buffer holds the audio since the last trim point. Each step transcribes the
whole buffer (with committed text before it as the prompt); the longest common
prefix of this hypothesis and the previous one is committed, the rest stays
tentative. With the engine's fast steps, only hypotheses `agreement_spacing_s`
of audio apart vote; a step in between refreshes the tentative text and commits
only the words it and the step before it were both sure of. Past what two votes agree on, a vote
commits the words its newer hypothesis alone is sure of, where the older one only heard the start.
When the buffer grows past `buffer_trimming_s`, it is cut at the end
of the last committed sentence (or, failing that, the last committed word), so
each step's cost stays bounded however long the stream runs.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from whisperlivekit.asr.types import WHISPER_WINDOW_S, TranscribeRequest, TranscribeResult, Word
from whisperlivekit.audio import SAMPLE_RATE

PROMPT_CHARS = 200
UNHEARD_MIN_WORDS = 3
UNHEARD_MIN_PROBABILITY = 0.5
SHORT_STEP_S = 0.7  # a step covering less new audio than this holds back its last words
SHORT_STEP_HOLD_BACK_S = 0.4
# Hypotheses that vote are at least this much audio apart: steps closer together (the engine's fast
# steps on an idle device) refresh the tentative text and commit only sure words. On MP3 audio tiny.en
# flips between "canoe" and "cano" from step to step; consecutive hypotheses 0.3-0.9 s apart agreed on
# the wrong one in 9-10 of 20 step patterns, 1 s steps in 3 of 30, fast steps with this spacing in
# 3-4 of 20 (docs/architecture.md).
AGREEMENT_SPACING_S = 0.9
# Two close hypotheses that both give a word at least this probability commit it without waiting for the
# spaced vote. The flipped "cano" got 0.34-0.56 (MP3) and 0.45-0.49 (clean); most clean words 0.7-1.0.
FAST_COMMIT_MIN_PROBABILITY = 0.6
# Past the words two votes agree on, the newer one commits the words it gives at least this probability
# and that end this far before its audio's end, where the older vote heard only the start of them (its
# differing words lay in its own last SURE_HOLD_BACK_S). Under load, steps are ~1 s apart and each word
# waited for the vote after the one that heard it: off the clock at 0.9-1.2 s steps, commit lag p50
# 1.42 -> 1.06 s (test clips), 1.41 -> 1.27 s (phone call, 12 patterns), WER unchanged (docs/architecture.md).
# 0.7, not the first 0.8: at a saturated server's 1.5-2 s steps, 36 patterns, p50 1.5 -> 1.1 s, WER equal or
# lower; 0.6 went further but committed "and" heard as "in" once in 12 patterns.
SURE_MIN_PROBABILITY = 0.7
# A segment the VAD closed at time T is followed by at least its minimum silence (0.5 s): words a late
# step heard starting past T + this margin are the next utterance's, not this segment's tail.
NEXT_UTTERANCE_MARGIN_S = 0.25
# A segment's last step is left out once the steps so far heard this much past the VAD's speech end
# (`heard_speech_end`): the audio left is the silence the VAD waited through. The margin covers a word's soft
# end that the VAD already calls silence.
SPEECH_END_HEARD_S = 0.2
# Every rule that holds back words near the audio's end (short steps, close steps, a vote alone) measures
# a word by where its sound ends (`spoken_end`), not by its joined full stop, which Whisper times up to the
# next sound: Harvard's "well." (sound to 5.12 s, "." to 5.32 s, audio to 5.57 s) waited a step for it.
SURE_HOLD_BACK_S = 0.4
# A repeated word aligned to less than this (one 20 ms frame) has no sound of its own: `drop_unheard_repeats`.
UNHEARD_REPEAT_MAX_S = 0.02


def _worth_keeping(run: List[Word]) -> List[Word]:
    """A run of words a newer hypothesis left out is kept only if it looks like speech: Whisper's
    hallucinations over silence ("You", "Thank you.") are short and unsure, and a later hypothesis
    rightly drops them."""
    if len(run) >= UNHEARD_MIN_WORDS and sum(w.probability for w in run) / len(run) >= UNHEARD_MIN_PROBABILITY:
        return run
    return []


def spoken_end(word: Word) -> float:
    """Where the word's own sound ends: before a joined "." that Whisper timed up to the next word's
    onset. The buffer is cut and the next hypothesis' seam placed here, so that onset stays whole:
    cut inside "Glue", tiny.en skipped "Glue the sheet to the dark blue background." in every
    hypothesis after (tests/test_local_agreement_model.py)."""
    return word.end if word.spoken_end is None else word.spoken_end


def attach_punctuation(words: List[Word]) -> List[Word]:
    """Punctuation Whisper emits as a word of its own joins the word before it; with none before, it
    is dropped.

    A bare "." has no text to agree on: its empty key matched any other punctuation, so on the
    phone call a "." heard over the opening noise was committed, made "Hello?" look committed
    too, and the buffer was cut at a sentence end that was not one (a whole sentence lost)."""
    joined: List[Word] = []
    for word in words:
        if word.key:
            joined.append(word)
        elif joined:
            last = joined[-1]
            joined[-1] = Word(last.start, max(last.end, word.end), last.text + word.text.strip(),
                              min(last.probability, word.probability),
                              spoken_end(last))
    return joined


def drop_unheard_repeats(words: List[Word]) -> List[Word]:
    """A word's third or later copy in a row that the alignment gave no audio of its own is dropped.

    tiny.en loops on one word over the phone call's opening ("Hello? Hello? Oh, hello."): eleven
    "Hello."s in one hypothesis, the last seven aligned to no time at all, and two such hypotheses
    agreed on them (CI committed 19). A word said again and again is speech, so the first two
    copies in a row always stay, as does every copy the alignment found sound for."""
    kept: List[Word] = []
    run = 0
    for word in words:
        run = run + 1 if kept and word.key and word.key == kept[-1].key else 1
        if run >= 3 and spoken_end(word) - word.start < UNHEARD_REPEAT_MAX_S:
            continue
        kept.append(word)
    return kept


class HypothesisBuffer:
    """The uncommitted tail of the last hypothesis, and the agreement rule."""

    def __init__(self) -> None:
        self.previous: List[Word] = []
        self.committed_in_buffer: List[Word] = []
        self.last_committed_end_s = 0.0
        self.previous_audio_end_s = float("inf")
        self.committed_since_agree = False  # close steps committed words since the last vote

    def agree(self, hypothesis: List[Word], commit_before_s: float = float("inf"),
              audio_end_s: float = float("inf"), sure_min_probability: Optional[float] = None) -> List[Word]:
        """Commit the longest common prefix of `hypothesis` and the previous one (words ending
        before `commit_before_s` only).

        Whisper sometimes stops early: after the committed words of a buffer, the rest unsaid.
        Measured on Harvard at uneven 0.7-3 s steps, that lost a whole sentence (WER 24 %): the
        words the previous hypothesis heard there were dropped, and after the next trim Whisper
        started past them. A hypothesis that says nothing new is no evidence against them, so
        they stay tentative (`_unheard_tail`) instead.
        `audio_end_s` is where this hypothesis' audio ends (a word cut off there is not kept).
        With `sure_min_probability`, the words after the common prefix that this hypothesis is that sure
        of are committed too, if the previous one's differing words were at the edge of its audio: it
        heard only their start, and a third hypothesis would cost another step of lag.
        """
        new = hypothesis[self._uncommitted_start(hypothesis):]
        # Close steps that committed words since the last vote said new words: the newer ones decide.
        tail = [] if self.committed_since_agree else self._unheard_tail(hypothesis, new)
        self.committed_since_agree = False
        committed: List[Word] = []
        while new and self.previous and new[0].key == self.previous[0].key and spoken_end(new[0]) < commit_before_s:
            committed.append(new.pop(0))
            self.previous.pop(0)
        if sure_min_probability is not None and not tail and self._only_edge_words_left():
            sure_before_s = min(commit_before_s, audio_end_s - SURE_HOLD_BACK_S)
            while new and new[0].probability >= sure_min_probability and spoken_end(new[0]) < sure_before_s:
                committed.append(new.pop(0))
        self.record_committed(committed)
        self.previous = new + tail
        self.previous_audio_end_s = audio_end_s
        return committed

    def _only_edge_words_left(self) -> bool:
        """The previous hypothesis' words that this one did not repeat all lie in its last
        SURE_HOLD_BACK_S of audio ("plank." for "planks.", "sleeve." for "slid"): no evidence against
        the newer hypothesis, which heard them whole."""
        return all(w.end >= self.previous_audio_end_s - SURE_HOLD_BACK_S for w in self.previous)

    def agree_confident(self, earlier: List[Word], hypothesis: List[Word], commit_before_s: float,
                        min_probability: float) -> Tuple[List[Word], List[Word]]:
        """Commit the common prefix of two close hypotheses as far as both were sure of each word;
        returns (committed, the rest of `hypothesis` after them)."""
        new = hypothesis[self._uncommitted_start(hypothesis):]
        committed: List[Word] = []
        for before, now in zip(earlier, new):
            if now.key != before.key or spoken_end(now) >= commit_before_s or min(now.probability, before.probability) < min_probability:
                break
            committed.append(now)
        if committed:
            self.record_committed(committed)
            self.previous = self.previous[self._uncommitted_start(self.previous):]
            self.committed_since_agree = True
        return committed, new[len(committed):]

    def record_committed(self, words: List[Word]) -> None:
        """Words just committed: the seam of the next hypothesis is found after them."""
        if words:
            self.last_committed_end_s = spoken_end(words[-1])
            self.committed_in_buffer.extend(words)

    def _unheard_tail(self, hypothesis: List[Word], new: List[Word]) -> List[Word]:
        """The previous hypothesis' words, when this one (not empty) repeats only committed words.

        Only then: a hypothesis that stops after some new words may have dropped a repetition loop
        or a hallucination the previous one had, and keeping those would commit them."""
        if not hypothesis or new:
            return []  # no speech heard at all, or new words: the newer hypothesis decides
        # A word that ended at the edge of the previous audio was likely cut off mid-word ("It.").
        return _worth_keeping([w for w in self.previous if w.end < self.previous_audio_end_s - 0.2])

    def _uncommitted_start(self, hypothesis: List[Word]) -> int:
        """Index of the first word of `hypothesis` not yet committed.

        Word timestamps jitter between hypotheses (most on overlapping or
        narrow-band speech), so time alone drops or repeats words at the seam.
        The seam is anchored on text: where the last committed words reappear
        near the time-based guess. Time decides only when the text does not match.
        """
        by_time = next((i for i, w in enumerate(hypothesis) if w.start > self.last_committed_end_s - 0.1), len(hypothesis))
        if not self.committed_in_buffer:
            return by_time
        keys = [w.key for w in hypothesis]
        tail = [w.key for w in self.committed_in_buffer[-3:]]
        best, best_score = None, 0
        for j in range(max(0, by_time - 4), min(len(keys), by_time + 4) + 1):
            for n in range(len(tail), 0, -1):
                if j - n >= 0 and keys[j - n : j] == tail[-n:]:
                    score = 10 * n - abs(j - by_time)
                    if score > best_score:
                        best, best_score = j, score
                    break
        return by_time if best is None else best

    def forget_before(self, time_s: float) -> None:
        self.committed_in_buffer = [w for w in self.committed_in_buffer if spoken_end(w) > time_s]

    @property
    def tentative(self) -> List[Word]:
        return list(self.previous)

    def take_all(self) -> List[Word]:
        words, self.previous = self.previous, []
        self.record_committed(words)
        return words


class LocalAgreementPolicy:
    """Per-connection streaming state over a shared Whisper backend."""

    @classmethod
    def from_settings(cls, settings, language: Optional[str]) -> "LocalAgreementPolicy":
        # With fast steps, only hypotheses ~1 s apart vote; the ones between commit only sure words.
        spacing_s = AGREEMENT_SPACING_S if 0 < settings.fast_step_s < settings.min_chunk_size_s else 0.0
        return cls(settings.buffer_trimming_s, language=language, task=settings.task, agreement_spacing_s=spacing_s)

    def __init__(self, buffer_trimming_s: float = 8.0, language: Optional[str] = None, task: str = "transcribe",
                 hold_back_s: float = SHORT_STEP_HOLD_BACK_S, force_prefix: bool = True,
                 agreement_spacing_s: float = 0.0, fast_commit_min_probability: float = FAST_COMMIT_MIN_PROBABILITY,
                 sure_min_probability: Optional[float] = SURE_MIN_PROBABILITY) -> None:
        self.force_prefix = force_prefix  # send the buffer's committed words as the decoder's prefix
        self.buffer_trimming_s = buffer_trimming_s
        # Words ending this close to the buffer's end are not committed by a short step (under
        # SHORT_STEP_S of new audio): its last word is often cut off mid-word. Measured with
        # scripts/measure_steps.py: 0.4 s steps cost WER 0 % -> 5.7 % on the test clips, 0 % with a 0.4 s
        # hold-back; longer steps need none (docs/architecture.md).
        self.hold_back_s = hold_back_s
        self.language = language
        self.task = task
        self.audio = np.zeros(0, dtype=np.float32)
        self.offset_s = 0.0  # absolute stream time of audio[0]
        self.processed_samples = 0  # how much of `audio` the last request covered
        self._request_offset_s = 0.0  # offset_s when that request was made
        self._request_samples = 0  # its length
        self.hypothesis = HypothesisBuffer()
        self.committed: List[Word] = []
        self.agreement_spacing_s = agreement_spacing_s
        self.fast_commit_min_probability = fast_commit_min_probability
        self.sure_min_probability = sure_min_probability  # None: only what two votes agree on is committed
        self._agreed_at_s = float("-inf")  # audio end of the last hypothesis that took part in agreement
        self._preview: Optional[List[Word]] = None  # a newer hypothesis' uncommitted words, shown only

    # -- audio in --------------------------------------------------------------------
    def append_audio(self, samples: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, samples])

    def drop_audio_before(self, time_s: float) -> None:
        """Forget buffered audio before `time_s` (silence that will never be transcribed)."""
        cut = int((time_s - self.offset_s) * SAMPLE_RATE)
        if cut > 0:
            self.audio = self.audio[cut:]
            self.offset_s += cut / SAMPLE_RATE
            self.processed_samples = max(0, self.processed_samples - cut)

    @property
    def buffer_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def unprocessed_s(self) -> float:
        return (len(self.audio) - self.processed_samples) / SAMPLE_RATE

    @property
    def transcribed_until_s(self) -> float:
        return self.offset_s + self.processed_samples / SAMPLE_RATE

    # -- one step --------------------------------------------------------------------
    def prompt(self) -> str:
        before = [w for w in self.committed if spoken_end(w) <= self.offset_s + 0.01]
        return "".join(w.text for w in before)[-PROMPT_CHARS:]

    def prefix(self) -> str:
        """The committed words at the start of the buffer, which the backend forces instead of decoding
        them again (only words whose audio is still buffered, contiguous from the first)."""
        words = [w for w in self.hypothesis.committed_in_buffer if w.start >= self.offset_s - 0.05]
        if len(words) != len(self.hypothesis.committed_in_buffer):
            return ""  # part of the committed text lies before the buffer (silence dropped): decode it all
        return "".join(w.text for w in words)

    def next_request(self) -> TranscribeRequest:
        self._keep_within_whisper_window()
        self.processed_samples = len(self.audio)
        self._request_offset_s = self.offset_s
        self._request_samples = len(self.audio)
        return TranscribeRequest(audio=self.audio.copy(), prompt=self.prompt(), language=self.language, task=self.task,
                                 prefix=self.prefix() if self.force_prefix else "")

    def apply(self, result: TranscribeResult) -> List[Word]:
        """Fold one hypothesis in; returns the words it committed."""
        end_s = self._request_offset_s + self._request_samples / SAMPLE_RATE
        if result.degenerate:
            return self._after_a_loop(end_s)
        if self.language is None and result.language:
            self.language = result.language
        words = drop_unheard_repeats(attach_punctuation([w.shifted(self._request_offset_s) for w in result.words]))
        since_agreement_s = end_s - self._agreed_at_s
        committed: List[Word] = []
        if self.agreement_spacing_s > 0:
            # with fast steps on, what this step and the one before it were both sure of needs no spaced vote
            # (under load the steps are ~1 s apart anyway, and this commits a part of what the vote would)
            earlier = self._preview if self._preview is not None else self.hypothesis.previous
            committed, rest = self.hypothesis.agree_confident(
                earlier, words, end_s - self.hold_back_s, self.fast_commit_min_probability)
            if since_agreement_s < self.agreement_spacing_s:
                self._preview = rest
                self.committed.extend(committed)
                return committed
        self._agreed_at_s, self._preview = end_s, None
        hold_back_s = self.hold_back_s if since_agreement_s < SHORT_STEP_S else 0.0
        committed += self.hypothesis.agree(words, end_s - hold_back_s if hold_back_s > 0 else float("inf"), end_s,
                                           self.sure_min_probability)
        # Over the audio this hypothesis heard, not the buffer now: under load the buffer grew while the
        # step waited, and a hypothesis of its first 0.5 s is no stall.
        if not committed and self._request_samples / SAMPLE_RATE > self.buffer_trimming_s:
            committed = self._commit_stalled(end_s)
        self.committed.extend(committed)
        if self.buffer_s > self.buffer_trimming_s:
            self._trim()
        return committed

    def _after_a_loop(self, end_s: float) -> List[Word]:
        """Whisper looped on this buffer, on the full window too (the backend's retry). Over a short buffer
        the next step, with more audio, usually recovers: nothing changes. Over a full one it would loop on
        every later step, the buffer never trimmed and the transcript stuck until the segment ends:
        what the last sound hypothesis heard is committed, as in a stall."""
        if self._request_samples / SAMPLE_RATE <= self.buffer_trimming_s:
            return []
        committed = self._commit_stalled(end_s)
        self.committed.extend(committed)
        self._trim()
        return committed

    def _keep_within_whisper_window(self) -> None:
        """A buffer longer than Whisper's 30 s window: the backend hears only its last 30 s, so the audio
        before that can no longer be transcribed. It is dropped, with the tentative words heard in it.
        Only steps that never commit get here (Whisper hears no words in what VAD calls speech, or
        loops from the buffer's start); without this the buffer grew for as long as they went on."""
        excess_s = self.buffer_s - WHISPER_WINDOW_S
        if excess_s <= 0:
            return
        self.drop_audio_before(self.offset_s + excess_s)
        self.hypothesis.forget_before(self.offset_s)
        self.hypothesis.previous = [w for w in self.hypothesis.previous if w.start >= self.offset_s]
        if self._preview is not None:
            self._preview = [w for w in self._preview if w.start >= self.offset_s]

    def _commit_stalled(self, end_s: float) -> List[Word]:
        """Hypotheses have disagreed for a whole buffer (hard audio): waiting longer only lets Whisper
        skip more of an ever longer buffer. Commit the latest hypothesis up to its last sentence end
        at least 1 s before the end of the audio it heard (`end_s`), so the buffer can be trimmed there.

        Both measures are the hypothesis' own audio. With the live buffer's, a loaded server committed
        the " from the" Whisper heard in the phone call's first 0.5 s, because the buffer had grown to
        16 s while that step waited; forced as the next step's prefix, it made Whisper skip 10 s of
        speech (WER 56 %, tests/test_local_agreement_model.py)."""
        tentative = self.hypothesis.previous
        cut = max((i + 1 for i, w in enumerate(tentative) if w.text.rstrip().endswith((".", "?", "!")) and w.end < end_s - 1.0), default=0)
        if cut == 0:
            cut = sum(1 for w in tentative if w.end < end_s - 2.0)
        if cut == 0:
            return []
        words, self.hypothesis.previous = tentative[:cut], tentative[cut:]
        self.hypothesis.record_committed(words)
        return words

    def heard_speech_end(self, speech_end_s: float) -> bool:
        """The last hypothesis heard the segment's speech to its end (the VAD's) and some silence after it,
        so a last step would hear only that silence.

        Such a step, with every word committed and forced as its prefix, made tiny.en invent a next word
        ("superlative degree. 3.", "superlative degree. The"), and the segment's end committed it unheard
        (N = 1, looped clips with 0.5 s pauses: 2 words in 4 loops, docs/architecture.md)."""
        return self.transcribed_until_s >= speech_end_s + SPEECH_END_HEARD_S

    def finish(self, segment_end_s: Optional[float] = None) -> List[Word]:
        """End of a voiced segment or of the stream: commit the tentative tail and empty the buffer.

        `segment_end_s`: where the VAD heard the segment's speech end. On a loaded device the segment's
        last step runs late and hears the next utterance begin ("The boot?" for the start of "The birch
        canoe"); those words are not committed unheard, and their audio stays for the next segment
        (committing them and dropping their audio cut the next buffer mid-word: "Which can you slit").
        Where the last step heard nothing past the segment, the next buffer starts where it did before:
        starting it earlier in the pause moved where tiny.en hears "birch" as "bitch", and delayed that
        seam's commit by 0.3-1.2 s at N = 1, off the clock."""
        if self._preview is not None:  # the newest hypothesis heard the most
            self.hypothesis.previous, self._preview = self._preview, None
        self._agreed_at_s = float("-inf")
        cut_s = float("inf") if segment_end_s is None else segment_end_s + NEXT_UTTERANCE_MARGIN_S
        heard_next = [w for w in self.hypothesis.previous if w.start >= cut_s]
        self.hypothesis.previous = [w for w in self.hypothesis.previous if w.start < cut_s]
        committed = self.hypothesis.take_all()
        self.committed.extend(committed)
        done = self.processed_samples  # only the audio the last hypothesis covered; what came while it ran stays
        if heard_next:  # only then: an idle device's last step ends in the pause, and its buffer start is kept as it was
            done_s = max(cut_s, spoken_end(committed[-1]) if committed else cut_s)
            done = min(done, max(0, int(round((done_s - self.offset_s) * SAMPLE_RATE))))
        self.audio = self.audio[done:]
        self.offset_s += done / SAMPLE_RATE
        self.processed_samples = 0
        self.hypothesis.forget_before(self.offset_s)
        return committed

    @property
    def tentative(self) -> List[Word]:
        return list(self._preview) if self._preview is not None else self.hypothesis.tentative

    def _trim(self) -> None:
        in_buffer = [w for w in self.committed if spoken_end(w) > self.offset_s]
        if not in_buffer:
            return
        sentence_ends = [spoken_end(w) for w in in_buffer if w.text.rstrip().endswith((".", "?", "!"))]
        cut_s = sentence_ends[-1] if sentence_ends else (in_buffer[-1].end if self.buffer_s > 2 * self.buffer_trimming_s else None)
        if cut_s is None or cut_s <= self.offset_s:
            return
        cut = int((cut_s - self.offset_s) * SAMPLE_RATE)
        self.audio = self.audio[cut:]
        self.processed_samples = max(0, self.processed_samples - cut)
        self.offset_s = cut_s
        self.hypothesis.forget_before(cut_s)
