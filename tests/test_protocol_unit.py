"""`build_lines`, the wire format of lines and times, and `?mode=diff`, on hand-made words (no server, no model)."""

from __future__ import annotations

import pytest

from whisperlivekit.asr.types import Word
from whisperlivekit.api.params import parse_mode
from whisperlivekit.errors import BadParameters
from whisperlivekit.protocol import (
    DIFF, FULL, SILENCE_SPEAKER, DiffEncoder, PipelineView, build_lines, format_time, transcript_update, update_encoder,
)

PAUSE_S = 1.0


def word(text: str, start_s: float, end_s: float, probability: float = 0.9) -> Word:
    return Word(start_s, end_s, f" {text}", probability)


def shape(lines):
    """(speaker, text, start, end) per line, as a client receives them."""
    return [tuple(line.to_json()[key] for key in ("speaker", "text", "start", "end")) for line in lines]


def test_one_speaker_without_pauses_is_one_line():
    words = [word("good", 0.0, 0.4), word("morning", 0.5, 0.9)]
    assert shape(build_lines(words, [1, 1], PAUSE_S)) == [(1, " good morning", "0:00:00.00", "0:00:00.90")]


def test_a_speaker_change_starts_a_new_line():
    words = [word("hello", 0.0, 0.4), word("hi", 0.5, 0.7), word("there", 0.8, 1.0)]
    lines = build_lines(words, [1, 2, 2], PAUSE_S)
    assert [(line.speaker, line.to_json()["text"]) for line in lines] == [(1, " hello"), (2, " hi there")]


def test_a_pause_as_long_as_pause_s_becomes_a_silence_line_between_words():
    words = [word("before", 0.0, 0.5), word("after", 1.5, 2.0)]
    lines = build_lines(words, [1, 1], PAUSE_S)
    assert [line.speaker for line in lines] == [1, SILENCE_SPEAKER, 1]
    silence = lines[1].to_json()
    assert silence["text"] == "" and "words" not in silence and (silence["start"], silence["end"]) == ("0:00:00.50", "0:00:01.50")


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


# --- WhisperLiveKit's conventions and the additive fields ---------------------------------------


def _view(committed=(), tentative=(), received_s=3.0, detected_language=None, vad_heard_speech=True, **overrides):
    fields = dict(committed=list(committed), tentative=list(tentative), received_s=received_s, transcribed_until_s=received_s,
                  speech_pending=False, vad_silent=False, vad_heard_speech=vad_heard_speech, finished=False, error=None,
                  detected_language=detected_language)
    return PipelineView(**{**fields, **overrides})


def _update(view: PipelineView, no_audio_timeout_s: float = 0.0) -> dict:
    return transcript_update(view, PAUSE_S, no_audio_timeout_s)


def test_text_fields_keep_whispers_leading_spaces_so_joining_them_without_a_separator_reads_right():
    update = _update(_view([word("or", 0.0, 0.2), word("nine", 0.3, 0.5)], [word("to", 0.6, 0.7), word("save", 0.7, 0.9)]))
    assert update["lines"][0]["text"] == " or nine" and update["buffer_transcription"] == " to save"
    assert update["lines"][0]["text"] + update["buffer_transcription"] == " or nine to save"  # WhisperLiveKit's page


def test_lines_carry_each_words_text_times_and_probability():
    line = _update(_view([word("birch", 0.104, 0.5, 0.91234), word("canoe", 0.5, 0.9, 0.42)]))["lines"][0]
    assert line["words"] == [{"text": " birch", "start": 0.1, "end": 0.5, "probability": 0.912},
                             {"text": " canoe", "start": 0.5, "end": 0.9, "probability": 0.42}]
    assert "".join(w["text"] for w in line["words"]) == line["text"]


def test_detected_language_is_on_speech_lines_only_when_it_was_detected():
    words = [word("hola", 0.0, 0.4), word("otra", 2.0, 2.4)]
    lines = _update(_view(words, detected_language="es"))["lines"]
    assert [(line["speaker"], line.get("detected_language")) for line in lines] == [(1, "es"), (SILENCE_SPEAKER, None), (1, "es")]
    assert all("detected_language" not in line for line in _update(_view(words))["lines"])


def test_status_is_no_audio_detected_until_there_is_something_to_show():
    assert _update(_view(received_s=0.5, vad_heard_speech=False))["status"] == "no_audio_detected"
    assert _update(_view(tentative=[word("hi", 0.1, 0.3)], vad_heard_speech=False))["status"] == "active_transcription"
    assert _update(_view([word("hi", 0.1, 0.3)]))["status"] == "active_transcription"
    assert _update(_view(received_s=0.5, vad_heard_speech=False), no_audio_timeout_s=5.0)["status"] == "active_transcription"


# --- ?mode=diff ---------------------------------------------------------------------------------


def _line(text: str, start: str, speaker: int = 1) -> dict:
    return {"speaker": speaker, "text": text, "start": start, "end": start}


def _update_with(lines, buffer: str = "") -> dict:
    return {"status": "active_transcription", "lines": lines, "buffer_transcription": buffer, "buffer_diarization": "",
            "remaining_time_transcription": 0.0, "remaining_time_diarization": 0.0}


def apply(message: dict, held: list) -> list:
    """A client of `?mode=diff`: the reconstruction rule of docs/protocol-additions.md."""
    if message["type"] == "snapshot":
        return list(message["lines"])
    held = held[message.get("lines_pruned", 0):]
    new_lines = message.get("new_lines", [])
    return held[:message["n_lines"] - len(new_lines)] + new_lines


def test_the_first_message_is_a_snapshot_with_the_whole_update_then_diffs_with_a_sequence_number():
    encoder = DiffEncoder()
    first = encoder.encode(_update_with([_line(" a", "0")], " b"))
    assert first == {"type": "snapshot", "seq": 1, **_update_with([_line(" a", "0")], " b")}
    second = encoder.encode(_update_with([_line(" a", "0")], " b c"))
    assert second["type"] == "diff" and second["seq"] == 2 and second["n_lines"] == 1
    assert "new_lines" not in second and "lines_pruned" not in second and "lines" not in second
    assert second["buffer_transcription"] == " b c" and second["status"] == "active_transcription"


def test_a_new_line_is_sent_alone_and_the_old_ones_are_not_sent_again():
    encoder = DiffEncoder()
    encoder.encode(_update_with([_line(" a", "0"), _line("", "1", SILENCE_SPEAKER)]))
    message = encoder.encode(_update_with([_line(" a", "0"), _line("", "1", SILENCE_SPEAKER), _line(" c", "2")]))
    assert message["new_lines"] == [_line(" c", "2")] and message["n_lines"] == 3 and "lines_pruned" not in message


def test_a_last_line_that_grew_comes_again_and_n_lines_says_to_replace_it():
    encoder = DiffEncoder()
    encoder.encode(_update_with([_line(" a", "0"), _line(" b", "1")]))
    message = encoder.encode(_update_with([_line(" a", "0"), _line(" b c", "1")]))
    assert message["new_lines"] == [_line(" b c", "1")] and message["n_lines"] == 2


def test_when_the_only_line_changes_it_is_pruned_and_sent_again_as_whisperlivekit_does():
    encoder = DiffEncoder()
    encoder.encode(_update_with([_line(" a", "0")]))
    message = encoder.encode(_update_with([_line(" a b", "0")]))
    assert message["lines_pruned"] == 1 and message["new_lines"] == [_line(" a b", "0")] and message["n_lines"] == 1


def test_applying_every_diff_rebuilds_each_full_update_exactly():
    fulls = _session_updates()
    encoder, held, wire = DiffEncoder(), [], []
    for full in fulls:
        message = encoder.encode(full)
        wire.append(message)
        held = apply(message, held)
        assert held == full["lines"], message
        assert len(held) == message.get("n_lines", len(held))
    assert sum(len(m.get("new_lines", ())) for m in wire[1:]) < sum(len(f["lines"]) for f in fulls[1:])


def _session_updates() -> list:
    """Full updates as a session makes them: lines appear, the last one grows, a silence line grows,
    then the speakers are re-assigned (earlier lines change), then nothing is left."""
    texts = [" The", " birch", " canoe", " slid.", " Glue", " the", " sheet."]
    fulls, words = [], []
    for i, text in enumerate(texts):
        start = i * 0.5 + (2.0 if i >= 4 else 0.0)  # a 2 s pause before "Glue": a silence line
        words.append(word(text.strip(), start, start + 0.4))
        for received_s in (start + 0.5, start + 1.6):
            view = _view(words, [word("next", start + 0.5, start + 0.6)], received_s=received_s, vad_silent=True)
            fulls.append(transcript_update(view, PAUSE_S, 0.0))
    speakers = [1, 1, 2, 2, 2, 1, 1]
    fulls.append({**fulls[-1], "lines": [line.to_json() for line in build_lines(words, speakers, PAUSE_S)]})
    fulls.append(_update_with([]))  # everything gone (never happens live, but must still rebuild)
    return fulls


def test_the_pages_apply_diff_rebuilds_what_the_server_encodes(tmp_path):
    import json
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    encoder = DiffEncoder()
    cases = tmp_path / "diff-cases.json"
    cases.write_text(json.dumps([{"message": encoder.encode(full), "full": full} for full in _session_updates()]))
    script = Path(__file__).resolve().parent / "js" / "apply_diff_cases.mjs"
    result = subprocess.run([node, "--test", str(script)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "WLK_DIFF_CASES": str(cases)})
    assert result.returncode == 0 and "# pass 1" in result.stdout, result.stdout + result.stderr


def test_full_mode_sends_the_update_as_it_is_and_mode_is_checked():
    update = _update_with([_line(" a", "0")])
    assert update_encoder(FULL, words=True)(update) is update
    assert update_encoder(DIFF, words=True)(update)["type"] == "snapshot"
    assert parse_mode(None) == parse_mode("") == FULL and parse_mode("diff") == DIFF
    with pytest.raises(BadParameters, match="full, diff"):
        parse_mode("delta")


def test_words_are_sent_in_diff_mode_and_in_full_mode_only_when_asked():
    from whisperlivekit.api.params import parse_words

    assert parse_words(None, DIFF) is True and parse_words(None, FULL) is False
    assert parse_words("true", FULL) is True and parse_words("0", DIFF) is False
    with pytest.raises(BadParameters, match="words"):
        parse_words("yes please", FULL)
    update = _update(_view([word("one", 0.0, 0.4), word("two", 2.0, 2.4)]))
    plain = update_encoder(FULL, words=False)
    first = plain(update)
    assert [sorted(line) for line in first["lines"]] == [["end", "speaker", "start", "text"]] * 3
    assert first["lines"][0]["text"] == " one" and "words" in update["lines"][0]  # the engine's update is untouched
    assert plain(update)["lines"][0] is first["lines"][0]  # an unchanged line is stripped once
    snapshot = update_encoder(DIFF, words=False)(update)
    assert snapshot["type"] == "snapshot" and all("words" not in line for line in snapshot["lines"])


def test_the_line_cache_gives_the_same_updates_and_reuses_unchanged_lines():
    """A connection's `LineCache` must never change what is sent; it only saves rebuilding old lines."""
    from whisperlivekit.protocol import LineCache

    cache = LineCache()
    words = [word("one", 0.0, 0.4), word("two", 2.0, 2.4)]
    first = transcript_update(_view(words), PAUSE_S, 0.0, cache)
    grown = words + [word("three", 2.5, 2.9)]
    second = transcript_update(_view(grown), PAUSE_S, 0.0, cache)
    assert second == transcript_update(_view(grown), PAUSE_S, 0.0)  # as built without a cache
    assert second["lines"][0] is first["lines"][0] and second["lines"][1] is first["lines"][1]  # " one", silence
    assert second["lines"][2]["text"] == " two three"
    extended = grown[:-1] + [Word(2.5, 2.9, " three-four", 0.8)]  # a policy extends the last word's text
    assert transcript_update(_view(extended), PAUSE_S, 0.0, cache)["lines"][2]["text"] == " two three-four"
    assert transcript_update(_view(extended, detected_language="en"), PAUSE_S, 0.0, cache)["lines"][0]["detected_language"] == "en"


def test_a_long_monologue_is_cut_into_lines_at_sentence_ends_and_at_most_every_30_s():
    from whisperlivekit.protocol import LINE_MAX_S, LINE_TARGET_S

    sentence = ["Four", "hours", "of", "steady", "work", "faced", "us."]
    words = [word(text, i * 0.5, i * 0.5 + 0.4) for i, text in enumerate(sentence * 6)]  # 21 s, no pause
    lines = build_lines(words, [1] * len(words), PAUSE_S)
    assert [line.speaker for line in lines] == [1, 1]  # no silence line, one cut
    assert lines[0].to_json()["text"].endswith("us.") and lines[1].to_json()["text"].startswith(" Four")
    assert LINE_TARGET_S <= lines[0].end - lines[0].start < LINE_TARGET_S + 3.5
    unpunctuated = [word("word", i * 0.5, i * 0.5 + 0.4) for i in range(130)]  # 65 s
    spans = [line.end - line.start for line in build_lines(unpunctuated, [1] * 130, PAUSE_S)]
    assert len(spans) == 3 and max(spans) <= LINE_MAX_S + 0.5, spans
