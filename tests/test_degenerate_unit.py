"""The text-only check for Whisper looping (shared by every backend): what it flags and what it lets
through. A flagged hypothesis is redone on the full window without the prompt (the retry is tested
with the real model in test_torch_backend.py)."""

from __future__ import annotations

import pytest

from whisperlivekit.asr.backends.degenerate import looks_degenerate, repeats_back_to_back


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
