"""The text-only check for Whisper looping (shared by every backend): what it flags and what it lets
through, and the cut of a loop Whisper ran past the end of its audio. A flagged hypothesis that is not
such a loop is redone on the full window without the prompt (both are tested with the real model in
test_torch_backend.py and test_prefix_forcing.py)."""

from __future__ import annotations

import re
from typing import List

import pytest

from whisperlivekit.asr.backends.degenerate import cut_tail_loop, heard_to_the_end, looks_degenerate, repeats_back_to_back
from whisperlivekit.asr.types import Word


@pytest.mark.parametrize("text", [
    # seen on the pyannote phone call at uneven steps: one extra copy, committed by LocalAgreement
    "So I don't hear that New Jersey now. I don't hear that New Jersey now.",
    "Well, there isn't that much difference. At least, you know, they all call me. Well, there isn't that "
    "much difference. At least, you know, they all call me.",
    "the cat sat on the mat the cat sat on the mat and then",
])
def test_a_run_of_five_words_or_more_said_twice_in_a_row_is_a_loop(text):
    assert looks_degenerate(text, n_tokens=len(text.split()) + 4, duration_s=10.0)


@pytest.mark.parametrize("text", [
    "Hello? Hello? Hello. Oh, hello. I didn't know you were there.",  # short words repeated: people do
    "I'm originally from Chicago. Oh, I'm originally from Chicago also.",  # said twice, apart: dialogue
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    "no no no no",  # four words: below the run length
    # the phone call heard in one 15.8 s step of a loaded server: one word said over and over is speech
    # (flagged, the step was ignored, and its retry on the full window flagged again)
    "Hello? Hello. Hello. Hello. Hello. Hello. Hello. Hello. I didn't know you were there. I needed to design.",
    "no no no no no no no no no no, I said it was fine",
])
def test_natural_speech_is_not_flagged(text):
    assert not looks_degenerate(text, n_tokens=len(text.split()) + 4, duration_s=10.0)


def test_repeats_back_to_back_needs_adjacent_copies():
    words = "a b c d e x a b c d e".split()
    assert not repeats_back_to_back(words)
    assert repeats_back_to_back("x a b c d e a b c d e".split())
    assert not repeats_back_to_back("a b c d a b c d".split())  # four words
    assert repeats_back_to_back("a b c d a b c d".split(), min_words=4)


@pytest.mark.parametrize("text, n_tokens, duration_s", [
    (" ".join(["you"] * 40), 40, 2.0),  # runs to the token cap
    (" ".join(["Hello."] * 12), 24, 10.0),  # compresses 4.6x
    ("I didn't know you were there. " + " ".join(["Hello."] * 20), 50, 10.0),
])
def test_a_loop_of_one_word_is_still_a_loop(text, n_tokens, duration_s):
    assert looks_degenerate(text, n_tokens=n_tokens, duration_s=duration_s)


# -- a loop after the end of the audio: cut to its first copy instead of a retry ------------------
VOCAB = [" It's", " easy", ".", " Four", " hours", " of", " steady", " work", " faced", " us", " Glue", " the", " sheet"]


def _tokens(text: str) -> List[int]:
    return [VOCAB.index(piece) for piece in re.findall(r" ?[\w']+|\.", text)]


def _decode(tokens) -> str:
    return "".join(VOCAB[t] for t in tokens)


def test_a_sentence_said_again_after_the_audio_ends_keeps_its_first_copy_and_its_full_stop():
    # seen with tiny.en at 0.4-1 s steps: the prefix heard, then the last sentence once more. The copies
    # are also periodic one token earlier (the "." before each "Four"): the cut still keeps "us."
    looped = _tokens(" It's easy. Four hours of steady work faced us. Four hours of steady work faced us.")
    kept = cut_tail_loop(looped, forced=3, decode=_decode, duration_s=8.0)
    assert _decode(kept) == " It's easy. Four hours of steady work faced us."


def test_a_loop_run_to_the_token_cap_keeps_one_copy():
    looped = _tokens(" It's easy." + " Glue the sheet." * 6 + " Glue the")
    assert _decode(cut_tail_loop(looped, forced=0, decode=_decode, duration_s=4.0)) == " It's easy. Glue the sheet."


@pytest.mark.parametrize("text, forced", [
    (" Glue the sheet. Glue the sheet. Glue the sheet.", 0),  # from the first token: nothing heard before it
    (" It's easy. Glue the sheet. Glue the sheet.", 9),  # the second copy is part of the forced prefix
    (" It's easy. us us us us us us us us", 0),  # one word said over and over is speech
    (" It's easy. Four hours of steady work faced us.", 0),  # no loop at the end at all
])
def test_loops_that_are_not_cut_are_left_to_the_retry(text, forced):
    assert cut_tail_loop(_tokens(text), forced=forced, decode=_decode, duration_s=8.0) is None


def test_a_cut_hypothesis_must_reach_the_end_of_its_audio():
    """Four real copies of a sentence: tiny.en looped on them, and the cut stopped at 4.6 s of 10.4."""
    def words(last_start_s: float) -> List[Word]:
        return [Word(0.0, 0.4, " The"), Word(last_start_s, last_start_s + 0.3, " planks.")]

    assert heard_to_the_end(words(7.66), duration_s=8.38)
    assert not heard_to_the_end(words(3.66), duration_s=10.4)
    assert not heard_to_the_end([], duration_s=2.0)


def test_a_cut_that_keeps_one_word_four_times_in_a_row_is_left_to_the_retry():
    """The phone call's opening: tiny.en looped after hearing "Hello." seven times for three said."""
    looped = _tokens(" It's easy." + " us." * 4 + " Four hours of steady work. Four hours of steady work.")
    assert cut_tail_loop(looped, forced=0, decode=_decode, duration_s=8.0) is None
    assert cut_tail_loop(_tokens(" It's easy. us. us. Four hours of steady work. Four hours of steady work."),
                         forced=0, decode=_decode, duration_s=8.0) is not None
