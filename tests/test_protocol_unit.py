"""`build_lines` and the wire format of times, on hand-made words (no server, no model)."""

from __future__ import annotations

from whisperlivekit.asr.types import Word
from whisperlivekit.protocol import SILENCE_SPEAKER, build_lines, format_time

PAUSE_S = 1.0


def word(text: str, start_s: float, end_s: float) -> Word:
    return Word(start_s, end_s, f" {text}")


def shape(lines):
    """(speaker, text, start, end) per line, as a client receives them."""
    return [tuple(line.to_json().values()) for line in lines]


def test_one_speaker_without_pauses_is_one_line():
    words = [word("good", 0.0, 0.4), word("morning", 0.5, 0.9)]
    assert shape(build_lines(words, [1, 1], PAUSE_S)) == [(1, "good morning", "0:00:00.00", "0:00:00.90")]


def test_a_speaker_change_starts_a_new_line():
    words = [word("hello", 0.0, 0.4), word("hi", 0.5, 0.7), word("there", 0.8, 1.0)]
    lines = build_lines(words, [1, 2, 2], PAUSE_S)
    assert [(line.speaker, line.to_json()["text"]) for line in lines] == [(1, "hello"), (2, "hi there")]


def test_a_pause_as_long_as_pause_s_becomes_a_silence_line_between_words():
    words = [word("before", 0.0, 0.5), word("after", 1.5, 2.0)]
    lines = build_lines(words, [1, 1], PAUSE_S)
    assert [line.speaker for line in lines] == [1, SILENCE_SPEAKER, 1]
    silence = lines[1].to_json()
    assert silence["text"] is None and (silence["start"], silence["end"]) == ("0:00:00.50", "0:00:01.50")


def test_a_shorter_pause_stays_inside_the_line():
    words = [word("before", 0.0, 0.5), word("after", 1.4, 2.0)]
    assert [line.speaker for line in build_lines(words, [1, 1], PAUSE_S)] == [1]


def test_leading_silence_of_pause_s_or_more_is_reported():
    lines = build_lines([word("late", 3.0, 3.5)], [1], PAUSE_S)
    assert [(line.speaker, line.start, line.end) for line in lines] == [(SILENCE_SPEAKER, 0.0, 3.0), (1, 3.0, 3.5)]


def test_trailing_silence_is_reported_once_it_lasts_pause_s():
    words = [word("done", 0.0, 0.5)]
    assert len(build_lines(words, [1], PAUSE_S, trailing_silence_from=0.6, now_s=1.4)) == 1  # 0.8 s so far
    lines = build_lines(words, [1], PAUSE_S, trailing_silence_from=0.6, now_s=2.0)
    assert (lines[-1].speaker, lines[-1].start, lines[-1].end) == (SILENCE_SPEAKER, 0.6, 2.0)


def test_trailing_silence_never_starts_before_the_last_word_ends():
    lines = build_lines([word("done", 0.0, 1.5)], [1], PAUSE_S, trailing_silence_from=0.2, now_s=3.0)
    assert (lines[-1].start, lines[-1].end) == (1.5, 3.0)


def test_no_words_no_lines():
    assert build_lines([], [], PAUSE_S) == []


def test_times_are_h_mm_ss_cc_and_never_negative():
    assert format_time(0) == "0:00:00.00"
    assert format_time(3723.456) == "1:02:03.46"
    assert format_time(59.999) == "0:01:00.00"
    assert format_time(-0.2) == "0:00:00.00"
