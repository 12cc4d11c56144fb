"""LocalAgreement-2 without a model: synthetic hypotheses in, committed words out (milliseconds per test)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import pytest

from whisperlivekit.asr.policies.local_agreement import SURE_MIN_PROBABILITY, HypothesisBuffer, LocalAgreementPolicy
from whisperlivekit.asr.types import TranscribeResult, Word
from whisperlivekit.audio import SAMPLE_RATE


def words(text: str, start_s: float = 0.0, step_s: float = 0.4) -> List[Word]:
    """' the cat sat' → Words 0.4 s apart from `start_s`, with Whisper's leading spaces; 'cat@0.5' is a
    word the model gave probability 0.5. The others get 0.65: sure enough for two close steps, not for a
    hypothesis alone (`SURE_MIN_PROBABILITY`), so the tests of the two-vote rules see those rules alone."""
    out = []
    for i, token in enumerate(text.split()):
        word, _, probability = token.partition("@")
        out.append(Word(start_s + i * step_s, start_s + (i + 1) * step_s, f" {word}", float(probability or 0.65)))
    return out


def texts(ws: List[Word]) -> List[str]:
    return [w.text.strip() for w in ws]


def seconds_of_audio(s: float) -> np.ndarray:
    return np.zeros(int(s * SAMPLE_RATE), dtype=np.float32)


# -- HypothesisBuffer ---------------------------------------------------------------------------
def test_a_first_hypothesis_commits_nothing_and_stays_tentative():
    buffer = HypothesisBuffer()
    assert buffer.agree(words("the cat sat")) == []
    assert texts(buffer.tentative) == ["the", "cat", "sat"]


def test_the_prefix_two_hypotheses_share_is_committed_and_the_rest_stays_tentative():
    buffer = HypothesisBuffer()
    buffer.agree(words("the cat sat"))
    assert texts(buffer.agree(words("the cat sat on the"))) == ["the", "cat", "sat"]
    assert texts(buffer.tentative) == ["on", "the"]
    assert buffer.last_committed_end_s == pytest.approx(1.2)


def test_agreement_stops_at_the_first_word_that_differs():
    buffer = HypothesisBuffer()
    buffer.agree(words("the cat sat on"))
    assert texts(buffer.agree(words("the cap sat on"))) == ["the"]
    assert texts(buffer.tentative) == ["cap", "sat", "on"]


def test_case_and_punctuation_do_not_break_agreement():
    buffer = HypothesisBuffer()
    buffer.agree(words("Hello, world"))
    assert texts(buffer.agree(words("hello world."))) == ["hello", "world."]


def test_committed_words_are_never_committed_twice():
    buffer = HypothesisBuffer()
    buffer.agree(words("the cat sat"))
    buffer.agree(words("the cat sat on"))  # commits the cat sat
    assert texts(buffer.agree(words("the cat sat on the mat"))) == ["on"]
    assert texts(buffer.agree(words("the cat sat on the mat"))) == ["the", "mat"]


def test_a_committed_word_that_reappears_with_an_earlier_timestamp_is_not_repeated():
    buffer = HypothesisBuffer()
    buffer.agree(words("the cat sat"))
    buffer.agree(words("the cat sat on"))  # "sat" committed, ending at 1.2 s
    jittered = words("the cat sat on the", step_s=0.36)  # every word ~0.1 s earlier this time
    assert texts(buffer.agree(jittered)) == ["on"]


def test_take_all_commits_the_tentative_tail():
    buffer = HypothesisBuffer()
    buffer.agree(words("good morning everyone"))
    assert texts(buffer.take_all()) == ["good", "morning", "everyone"]
    assert buffer.tentative == [] and buffer.last_committed_end_s == pytest.approx(1.2)


# Whisper sometimes stops early, after the words already committed: that says nothing against the
# words the previous hypothesis heard after them.
def test_words_a_hypothesis_stopped_short_of_stay_tentative():
    buffer = HypothesisBuffer()
    buffer.agree(words("the birch canoe slid"))
    buffer.agree(words("the birch canoe slid glue the sheet to the dark"))  # commits "the birch canoe slid"
    assert buffer.agree(words("the birch canoe slid")) == []  # stopped after what was committed
    assert texts(buffer.tentative) == ["glue", "the", "sheet", "to", "the", "dark"]
    assert texts(buffer.take_all()) == ["glue", "the", "sheet", "to", "the", "dark"]


def test_a_hypothesis_with_new_words_decides_even_if_it_ends_earlier():
    # The previous one may have ended in a repetition loop or a hallucination: not kept.
    buffer = HypothesisBuffer()
    buffer.agree(words("it is easy to tell it is easy to tell"))
    assert texts(buffer.agree(words("it is easy"))) == ["it", "is", "easy"]
    assert buffer.tentative == []


def test_a_short_or_unsure_run_left_out_is_dropped_like_a_hallucination():
    buffer = HypothesisBuffer()
    buffer.agree(words("the cat sat"))
    buffer.agree(words("the cat sat thank you"))  # commits "the cat sat"
    assert buffer.agree(words("the cat sat")) == []
    assert buffer.tentative == []  # "thank you": two words, not kept
    unsure = HypothesisBuffer()
    unsure.agree(words("the cat"))
    unsure.agree(words("the cat") + [Word(w.start, w.end, w.text, 0.2) for w in words("so so so so", 0.8)])
    unsure.agree(words("the cat"))
    assert unsure.tentative == []


def test_a_word_cut_off_at_the_edge_of_the_previous_audio_is_not_kept():
    buffer = HypothesisBuffer()
    buffer.agree(words("the cat"))
    buffer.agree(words("the cat sat on the mat it"), audio_end_s=2.8)  # "it" ends at 2.8 s: the audio's edge
    assert buffer.agree(words("the cat")) == []
    assert texts(buffer.tentative) == ["sat", "on", "the", "mat"]


def _vote_after_an_edge(canoe: str, older_audio_end_s: float = 1.0, sure: Optional[float] = SURE_MIN_PROBABILITY) -> Tuple[List[str], List[str]]:
    """Two votes 1 s apart (a loaded server's steps), words of 0.3 s: the older one heard 'the birch'
    and, ending at 0.9 s, 'cano'; the newer one 'the birch <canoe> slid on the' to 2.0 s.
    Returns (committed, tentative)."""
    buffer = HypothesisBuffer()
    buffer.agree(words("the@0.9 birch@0.9 cano@0.4", step_s=0.3), audio_end_s=older_audio_end_s)
    newer = words(f"the@0.9 birch@0.9 {canoe} slid@0.95 on@0.9 the@0.9", step_s=0.3)
    return texts(buffer.agree(newer, audio_end_s=2.0, sure_min_probability=sure)), texts(buffer.tentative)


def test_a_vote_commits_the_words_it_is_sure_of_where_the_older_vote_heard_only_their_start():
    """'cano' lay in the older vote's last 0.4 s: it heard only the word's start. The newer vote
    commits its sure words after the agreed 'the birch' up to 0.4 s before its audio's end, without
    waiting a step for a third hypothesis; 'the' (ends 1.8 s) waits."""
    assert _vote_after_an_edge("canoe@0.9") == (["the", "birch", "canoe", "slid", "on"], ["the"])
    # the rule off: only what both votes said
    assert _vote_after_an_edge("canoe@0.9", sure=None) == (["the", "birch"], ["canoe", "slid", "on", "the"])


def test_a_word_the_newer_vote_is_unsure_of_waits_with_the_words_after_it():
    assert _vote_after_an_edge("canoe@0.6") == (["the", "birch"], ["canoe", "slid", "on", "the"])
    # 0.75 is sure enough by default (0.7), not under the first threshold (0.8)
    assert _vote_after_an_edge("canoe@0.75") == (["the", "birch", "canoe", "slid", "on"], ["the"])
    assert _vote_after_an_edge("canoe@0.75", sure=0.8) == (["the", "birch"], ["canoe", "slid", "on", "the"])


def test_a_word_the_older_vote_heard_whole_and_said_otherwise_is_a_disagreement_not_an_edge():
    # the older vote's audio went on to 2.0 s: 'cano' (ends 0.9 s) was heard whole, and the votes disagree
    assert _vote_after_an_edge("canoe@0.9", older_audio_end_s=2.0) == (["the", "birch"], ["canoe", "slid", "on", "the"])


def _sure_vote_on_a_sentence_end(planks: Word) -> List[str]:
    """The older vote heard 'the birch cano' to 1.0 s; the newer one, to 2.0 s, says 'the birch canoe slid'
    and then `planks`, its last word. What it commits."""
    buffer = HypothesisBuffer()
    buffer.agree(words("the@0.9 birch@0.9 cano@0.4", step_s=0.3), audio_end_s=1.0)
    newer = words("the@0.9 birch@0.9 canoe@0.9 slid@0.9", step_s=0.3) + [planks]
    return texts(buffer.agree(newer, audio_end_s=2.0, sure_min_probability=SURE_MIN_PROBABILITY))


def test_a_sure_word_whose_full_stop_runs_to_the_audios_edge_is_committed_by_its_own_end():
    """Whisper times a joined "." up to the next sound (Harvard's "well." at a step's end: "well" ends at
    5.12 s, its "." at 5.32 s, the audio at 5.57 s). The word was heard whole 0.45 s before the audio's
    end, so the vote commits it; held back by the full stop's end, it waited for the next vote."""
    assert _sure_vote_on_a_sentence_end(Word(1.2, 1.8, " planks.", 0.9, spoken_end=1.5))[-1] == "planks."
    # a word that itself ends within 0.4 s of the audio's end may be cut off: it waits
    assert _sure_vote_on_a_sentence_end(Word(1.2, 1.8, " planks", 0.9))[-1] == "slid"


def test_under_one_second_steps_the_policy_commits_sure_words_a_step_earlier():
    """The policy's default, through `apply`: each step commits the sure words it heard whole ('the' at
    the first step, 'canoe slid' at the second), which the two-vote rule alone leaves for the next step.
    The unsure 'on' waits for the third."""
    def committed_per_step(sure: Optional[float]) -> List[List[str]]:
        policy = LocalAgreementPolicy(buffer_trimming_s=30.0, sure_min_probability=sure)
        steps = []
        for hypothesis in ("the@0.9 birch@0.9 cano@0.4", "the@0.9 birch@0.9 canoe@0.9 slid@0.9 on@0.5 the@0.9",
                           "the@0.9 birch@0.9 canoe@0.9 slid@0.9 on@0.9 the@0.9 smooth@0.9"):
            policy.append_audio(seconds_of_audio(1.0))
            policy.next_request()
            steps.append(texts(policy.apply(TranscribeResult(words(hypothesis, step_s=0.3)))))
        return steps

    assert committed_per_step(SURE_MIN_PROBABILITY) == [["the"], ["birch", "canoe", "slid"], ["on", "the", "smooth"]]
    assert committed_per_step(None) == [[], ["the", "birch"], ["canoe", "slid", "on", "the"]]


def test_a_hypothesis_with_no_words_keeps_nothing_alive():
    buffer = HypothesisBuffer()
    buffer.agree(words("the cat sat on the mat"))
    buffer.agree([])
    assert buffer.tentative == []


# -- LocalAgreementPolicy -----------------------------------------------------------------------
def test_the_request_covers_the_buffer_and_words_are_placed_at_stream_time():
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0, language="en")
    policy.append_audio(seconds_of_audio(2.0))
    request = policy.next_request()
    assert len(request.audio) == 2 * SAMPLE_RATE and request.language == "en" and request.prompt == ""
    policy.apply(TranscribeResult(words("the cat sat")))
    committed = policy.apply(TranscribeResult(words("the cat sat on")))
    assert texts(committed) == ["the", "cat", "sat"] and committed[0].start == 0.0
    assert texts(policy.tentative) == ["on"]


def test_a_degenerate_hypothesis_changes_nothing():
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    policy.append_audio(seconds_of_audio(2.0))
    policy.next_request()
    policy.apply(TranscribeResult(words("the cat sat")))
    assert policy.apply(TranscribeResult(words("la la la la"), degenerate=True)) == []
    assert texts(policy.tentative) == ["the", "cat", "sat"]  # still the last real hypothesis
    assert texts(policy.apply(TranscribeResult(words("the cat sat on")))) == ["the", "cat", "sat"]


def test_a_loop_over_a_full_buffer_commits_the_last_sound_hypothesis_as_a_stall():
    # Else every later step over the same buffer loops too, and nothing is committed until the segment ends.
    policy = LocalAgreementPolicy(buffer_trimming_s=3.0)
    policy.append_audio(seconds_of_audio(2.0))
    policy.next_request()
    policy.apply(TranscribeResult(words("it rained. we stayed in")))
    policy.append_audio(seconds_of_audio(2.0))
    policy.next_request()  # 4 s > 3 s
    assert texts(policy.apply(TranscribeResult(words("la la la la"), degenerate=True))) == ["it", "rained."]
    assert policy.offset_s == pytest.approx(0.8) and texts(policy.tentative) == ["we", "stayed", "in"]


def test_a_request_never_holds_more_than_whispers_30_s_window():
    # Steps that never commit (no words heard in what VAD calls speech) let the buffer grow without
    # bound, and the backend hears only the last 30 s of a longer request.
    policy = LocalAgreementPolicy()
    for _ in range(45):
        policy.append_audio(seconds_of_audio(1.0))
        request = policy.next_request()
        policy.apply(TranscribeResult([]))
        assert len(request.audio) <= 30 * SAMPLE_RATE
    assert policy.offset_s == pytest.approx(15.0) and policy.transcribed_until_s == pytest.approx(45.0)
    policy.append_audio(seconds_of_audio(1.0))
    policy.next_request()
    policy.apply(TranscribeResult(words("at last", start_s=29.0)))  # heard at 29-29.8 s of the request
    assert [round(w.start, 1) for w in policy.tentative] == [45.0, 45.4]  # placed where they were said


def test_a_detected_language_is_kept_for_the_following_requests():
    policy = LocalAgreementPolicy()
    policy.append_audio(seconds_of_audio(1.0))
    assert policy.next_request().language is None  # detect
    policy.apply(TranscribeResult(words("bonjour"), language="fr"))
    assert policy.next_request().language == "fr"


def test_finish_commits_the_tail_and_keeps_audio_that_arrived_during_the_last_request():
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    policy.append_audio(seconds_of_audio(2.0))
    policy.next_request()
    policy.append_audio(seconds_of_audio(0.5))  # arrives while the request runs
    policy.apply(TranscribeResult(words("good morning")))
    assert texts(policy.finish()) == ["good", "morning"]
    assert policy.offset_s == 2.0 and policy.buffer_s == 0.5
    assert texts(policy.committed) == ["good", "morning"]


def test_a_segments_speech_end_counts_as_heard_only_with_some_silence_after_it():
    """The engine leaves out a segment's last step once the steps heard its speech out (SPEECH_END_HEARD_S)."""
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    policy.append_audio(seconds_of_audio(4.0))
    policy.next_request()  # the steps so far heard 4.0 s
    policy.append_audio(seconds_of_audio(0.1))  # the audio the VAD's last windows of silence came in
    assert policy.heard_speech_end(3.5)
    assert policy.heard_speech_end(3.8)
    assert not policy.heard_speech_end(3.9), "a word ending at 3.9 s may have been cut at the 4.0 s edge"
    assert not policy.heard_speech_end(4.05), "the speech ran past what the steps heard"


def test_committed_text_before_the_buffer_is_the_next_prompt():
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    policy.append_audio(seconds_of_audio(2.0))
    policy.next_request()
    policy.apply(TranscribeResult(words("good morning")))
    policy.finish()
    policy.append_audio(seconds_of_audio(1.0))
    assert policy.next_request().prompt == " good morning"


def test_a_long_buffer_is_trimmed_at_the_end_of_the_last_committed_sentence():
    policy = LocalAgreementPolicy(buffer_trimming_s=3.0)
    policy.append_audio(seconds_of_audio(2.0))
    policy.next_request()
    policy.apply(TranscribeResult(words("it rained. we stayed in")))  # "rained." ends at 0.8 s
    policy.apply(TranscribeResult(words("it rained. we stayed in")))  # all committed; 2 s < 3 s: no trim
    assert policy.offset_s == 0.0
    policy.append_audio(seconds_of_audio(2.0))
    policy.next_request()
    policy.apply(TranscribeResult(words("it rained. we stayed in all day")))  # 4 s > 3 s
    assert policy.offset_s == pytest.approx(0.8) and policy.buffer_s == pytest.approx(3.2)
    assert policy.transcribed_until_s == pytest.approx(4.0)  # trimming does not lose track of what was covered
    assert policy.next_request().prompt == " it rained."  # what was cut off becomes context


def test_a_hypothesis_without_agreement_over_a_full_buffer_is_committed_to_a_sentence_end():
    # Nothing to agree with and a buffer past buffer_trimming_s: waiting longer only makes Whisper
    # skip more, so the hypothesis is committed to its last sentence end at least 1 s before the
    # buffer end, and the buffer is trimmed there.
    policy = LocalAgreementPolicy(buffer_trimming_s=3.0)
    policy.append_audio(seconds_of_audio(4.0))
    policy.next_request()
    assert texts(policy.apply(TranscribeResult(words("it rained. we stayed in")))) == ["it", "rained."]
    assert texts(policy.tentative) == ["we", "stayed", "in"]
    assert policy.offset_s == pytest.approx(0.8)


def test_a_hypothesis_of_a_short_buffer_is_no_stall_though_the_buffer_grew_while_its_step_waited():
    # A loaded server: the step was built over 0.5 s, 10 s more arrived before its result. Whisper's
    # guess over those 0.5 s (" from the" on the phone call) must wait for a vote like any other.
    policy = LocalAgreementPolicy(buffer_trimming_s=3.0)
    policy.append_audio(seconds_of_audio(0.5))
    policy.next_request()
    policy.append_audio(seconds_of_audio(10.0))
    assert policy.apply(TranscribeResult(words("from the", step_s=0.2))) == []
    assert texts(policy.tentative) == ["from", "the"] and policy.offset_s == 0.0
    assert policy.next_request().prefix == ""  # nothing committed: nothing forced on the next step


def test_punctuation_decoded_as_a_word_of_its_own_joins_the_word_before_or_is_dropped():
    # The phone call at one step schedule: "." heard over the opening noise was committed, its empty
    # text then matched the "?" after "Hello", the buffer was cut at it, and a sentence was lost.
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    policy.append_audio(seconds_of_audio(3.0))
    for _ in range(2):
        policy.next_request()
        assert policy.apply(TranscribeResult([Word(0.0, 2.9, " .")])) == []
    assert policy.tentative == [] and policy.committed == []
    policy.append_audio(seconds_of_audio(1.0))
    policy.next_request()
    policy.apply(TranscribeResult([Word(0.0, 3.0, " Hello", 0.65), Word(3.0, 3.4, "?", 0.65)]))  # not sure enough alone
    assert [w.text for w in policy.tentative] == [" Hello?"] and policy.tentative[0].end == 3.4
    policy.next_request()
    committed = policy.apply(TranscribeResult([Word(0.0, 3.0, " Hello"), Word(3.0, 3.3, "."), Word(3.4, 3.8, " I")]))
    assert [w.text for w in committed] == [" Hello."]


# -- short steps (the engine's --fast-step on an idle device) ----------------------------------------
def _two_steps(step_s: float) -> List[str]:
    """Two steps of `step_s` new audio each whose hypotheses agree on 'the cat sat', the last word
    ending at the buffer's end; what the second step commits."""
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    policy.append_audio(seconds_of_audio(step_s))
    policy.next_request()
    policy.apply(TranscribeResult(words("the cat sat", step_s=2 * step_s / 3)))
    policy.append_audio(seconds_of_audio(step_s))
    policy.next_request()
    return texts(policy.apply(TranscribeResult(words("the cat sat", step_s=2 * step_s / 3))))


def test_a_short_step_holds_back_the_words_at_the_buffers_end_and_a_full_step_does_not():
    # 0.4 s steps: "sat" ends at 0.8 s, the buffer's end, so it may be cut off: not committed yet
    assert _two_steps(0.4) == ["the"]
    assert _two_steps(1.0) == ["the", "cat", "sat"]


def test_a_short_step_holds_back_a_word_by_its_sound_not_by_its_full_stop():
    """A step of 0.8 s hears 'the cat'; the next, 0.4 s later, 'the cat.', where 'cat' ends at 0.75 s and
    its "." runs to 1.2 s, the buffer's end (Whisper times it up to the next sound). 'cat' was heard
    whole 0.45 s before the end: the short step commits 'cat.' with 'the'."""
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    the, cat = Word(0.0, 0.3, " the", 0.65), Word(0.3, 0.75, " cat", 0.65)
    for step_s, hypothesis in ((0.8, [the, cat]), (0.4, [the, cat, Word(0.75, 1.2, ".", 0.65)])):
        policy.append_audio(seconds_of_audio(step_s))
        policy.next_request()
        committed = policy.apply(TranscribeResult(hypothesis))
    assert texts(committed) == ["the", "cat."]


def test_the_held_back_word_is_committed_by_the_next_step_that_hears_past_it():
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    for hypothesis in ("the", "the cat", "the cat sat"):  # words of 0.3 s, steps of 0.4 s
        policy.append_audio(seconds_of_audio(0.4))
        policy.next_request()
        policy.apply(TranscribeResult(words(hypothesis, step_s=0.3)))
    # "the" (ends 0.3 s) is committed by the step ending at 0.8 s, "cat" (0.6 s) by the one ending at
    # 1.2 s; each waited until a step ended at least 0.4 s after it
    assert texts(policy.committed) == ["the", "cat"]
    assert texts(policy.finish()) == ["sat"]  # a segment end commits the rest


def _fast_steps(hypotheses: List[str], spacing_s: float) -> Tuple[LocalAgreementPolicy, List[List[str]]]:
    """0.4 s steps (words of 0.25 s); one hypothesis per step. Returns the policy and what each step committed."""
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0, agreement_spacing_s=spacing_s)
    steps = []
    for hypothesis in hypotheses:
        policy.append_audio(seconds_of_audio(0.4))
        policy.next_request()
        steps.append(texts(policy.apply(TranscribeResult(words(hypothesis, step_s=0.25)))))
    return policy, steps


def test_with_agreement_spacing_only_hypotheses_a_second_apart_vote_and_the_others_are_shown():
    """The model flips between 'canoe' and 'cano' from step to step (MP3 audio, tiny.en), and is unsure
    of both (probability 0.34-0.56 for 'cano'). Without spacing, the steps at 0.8 and 1.2 s agree on
    'cano' (and the words before it); with it, the steps at 0.4 and 1.6 s vote, and 'cano' against
    'canoe' commits nothing past 'the birch' (which the close steps were sure of)."""
    flips = ["the birch", "the birch cano@0.45", "the birch cano@0.45 slid", "the birch canoe@0.5 slid on the",
             "the birch cano@0.45 slid on the"]
    assert "cano" in texts(_fast_steps(flips, spacing_s=0.0)[0].committed)
    spaced, _ = _fast_steps(flips, spacing_s=0.9)
    assert texts(spaced.committed) == ["the", "birch"]
    assert texts(spaced.tentative) == ["cano", "slid", "on", "the"]  # the newest hypothesis is what is shown
    assert texts(spaced.finish()) == ["cano", "slid", "on", "the"]  # a segment end commits what was shown


def _fast_commits(birch: str) -> List[List[str]]:
    """What each 0.4 s step commits, with agreement spaced 0.9 s; 'birch' as given."""
    text = ["the", birch, "canoe", "slid", "on", "the", "smooth", "planks"]
    return _fast_steps([" ".join(text[:n]) for n in range(1, 9)], spacing_s=0.9)[1]


def test_between_spaced_votes_two_close_steps_commit_the_words_both_were_sure_of():
    """Close steps need not wait for the spaced vote on words the model is sure of: each word is
    committed by the second step that heard it whole (0.4 s before that step's end)."""
    assert _fast_commits("birch") == [[], ["the"], ["birch"], ["canoe"], ["slid"], ["on"], ["the"], ["smooth"]]


def test_a_word_a_close_step_was_unsure_of_waits_for_the_spaced_vote_and_holds_the_words_after_it():
    steps = _fast_commits("birch@0.5")
    assert steps[:6] == [[], ["the"], [], [], [], []]
    # the vote at 2.8 s (1.2 s after the one at 1.6 s) commits it and what both votes heard after it,
    # and close steps commit sure words again from there
    assert steps[6] == ["birch", "canoe", "slid"]
    assert steps[7] == ["on", "the", "smooth"]


def test_close_steps_commit_a_word_whose_full_stop_runs_to_the_audios_edge():
    """A vote at 0.8 s and a close step at 1.2 s both say 'planks' (its sound ends at 0.7 s, its "." at
    1.0 s), sure enough for close steps (0.65), not for a vote alone. The close step commits it: heard
    whole 0.5 s before its audio's end, as the word without its full stop would be."""
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0, agreement_spacing_s=0.9)
    committed = []
    for step_s in (0.8, 0.4):
        policy.append_audio(seconds_of_audio(step_s))
        policy.next_request()
        hypothesis = [Word(0.2, 0.7, " planks", 0.65), Word(0.7, 1.0, ".", 0.65)]
        committed.append(texts(policy.apply(TranscribeResult(hypothesis))))
    assert committed == [[], ["planks."]]


def test_a_vote_that_repeats_what_close_steps_committed_drops_the_older_votes_extra_words():
    """The last vote heard 'd e f' after 'a b c' (a hallucination, say); a close step then committed
    'a b c' alone. The next vote says 'a b c' and stops: it said new words since the last vote (the
    close step's), so the older vote's 'd e f' are dropped, as without close-step commits, and a
    segment end does not commit them."""
    def hypothesis(text: str) -> TranscribeResult:
        return TranscribeResult([Word(0.1 * i, 0.1 * (i + 1), f" {w}", 0.65) for i, w in enumerate(text.split())])

    policy = LocalAgreementPolicy(buffer_trimming_s=30.0, agreement_spacing_s=0.9)
    for step_s, text in ((1.0, "a b c d e f"), (0.4, "a b c"), (0.6, "a b c")):
        policy.append_audio(seconds_of_audio(step_s))
        policy.next_request()
        policy.apply(hypothesis(text))
    assert texts(policy.committed) == ["a", "b", "c"]
    assert policy.tentative == []
    assert policy.finish() == []


def test_the_policy_spaces_agreement_only_when_the_engine_takes_fast_steps():
    from whisperlivekit.config import Settings

    assert LocalAgreementPolicy.from_settings(Settings(fast_step_s=0.4), "en").agreement_spacing_s == pytest.approx(0.9)
    assert LocalAgreementPolicy.from_settings(Settings(fast_step_s=0.0), "en").agreement_spacing_s == 0.0


def test_a_long_buffer_is_cut_where_the_sentences_last_word_ends_not_where_its_full_stop_does():
    """Whisper times a "." up to the next word's onset; a cut there starts the buffer inside that
    word. The cut goes where the word itself ends, and the committed sentence is the next prompt."""
    policy = LocalAgreementPolicy(buffer_trimming_s=5.0)
    policy.append_audio(seconds_of_audio(6.0))
    hypothesis = [Word(0.0, 1.0, " Smooth"), Word(1.0, 2.74, " planks"), Word(2.74, 3.0, "."),
                  Word(3.0, 3.2, " Glue"), Word(3.2, 3.4, " the"), Word(3.4, 3.7, " sheet")]
    for _ in range(2):
        policy.next_request()
        policy.apply(TranscribeResult(hypothesis))
    assert texts(policy.committed)[:2] == ["Smooth", "planks."]
    assert policy.committed[1].end == 3.0  # the line still ends after its full stop
    assert policy.offset_s == pytest.approx(2.74)
    policy.next_request()
    assert policy.prompt() == " Smooth planks."


# tiny.en's hypothesis of the phone call's first 7 s (faster-whisper, 1-s steps): the real "Hello?"s have
# sound, then the loop's copies sit at 8.84-8.96 s with no duration (times shortened from the trace).
_LOOPED = [(2.84, 7.22, "Hello."), (7.70, 8.16, "Hello."), (8.32, 8.50, "Hello."), (8.50, 8.66, "Hello.")] + [
    (t, t, "Hello.") for t in (8.84, 8.92, 8.94, 8.96, 8.96, 8.96, 8.96)] + [
    (8.96, 9.22, "didn't"), (9.22, 9.40, "know"), (9.40, 9.82, "you")]


def test_a_words_copies_in_a_row_that_the_alignment_gave_no_sound_are_dropped_from_a_hypothesis():
    from whisperlivekit.asr.policies.local_agreement import drop_unheard_repeats

    looped = [Word(start, end, f" {text}", 0.8) for start, end, text in _LOOPED]
    assert texts(drop_unheard_repeats(looped)) == ["Hello."] * 4 + ["didn't", "know", "you"]
    # the first two copies in a row are speech even with no duration ("no, no"), as is any other word
    said_twice = [Word(1.0, 1.3, " no,"), Word(1.3, 1.3, " no"), Word(1.3, 1.3, " way")]
    assert texts(drop_unheard_repeats(said_twice)) == ["no,", "no", "way"]


def test_two_hypotheses_that_loop_on_one_word_commit_only_its_copies_with_sound():
    policy = LocalAgreementPolicy(buffer_trimming_s=30.0)
    looped = [Word(start, end, f" {text}", 0.8) for start, end, text in _LOOPED]
    for _ in range(2):
        policy.append_audio(seconds_of_audio(5.0))
        policy.next_request()
        policy.apply(TranscribeResult(words=list(looped)))
    committed = texts(policy.committed)
    assert committed.count("Hello.") == 4, committed

