"""Real speech streamed to a real server, as a browser or script would, scored by WER."""

from __future__ import annotations

import pytest

from conftest import pace, run
from helpers import check_finished_stream
from whisperlivekit.client import stream

CLIPS = [("harvard", 0.10), ("arctic_a0007", 0.10),
         ("arctic_a0009", 0.25),  # tiny.en hears "Greggs in" for "Gregson" offline too (ctranslate2 4.8.5): 2 of 9 words
         # A 30 s two-speaker phone call, 8 kHz. Its WER depends on where the load puts each step:
         # off the clock at 20 uneven step schedules 12.6-23.0 % (tests/test_local_agreement_model.py);
         # live at 3x real time beside a second test worker 14.9-26.4 % (8 runs). Losing one sentence adds ~10 %.
         pytest.param("pyannote", 0.30, marks=pytest.mark.slow)]




@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_pcm_stream_is_transcribed_within_wer_bound(pcm_server, speech_pcm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    result = run(stream(pcm_server.ws_url, pcm, pcm=True, speed=pace(3.0)))
    assert result.config["useAudioWorklet"] is True
    error_rate = check_finished_stream(result, reference, max_wer)
    print(f"PCM {clip}: WER {error_rate:.1%}")


@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_webm_opus_stream_is_transcribed_within_wer_bound(webm_server, speech_pcm, webm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    result = run(stream(webm_server.ws_url, webm(pcm), pcm=False, speed=pace(3.0)))
    assert result.config["useAudioWorklet"] is False
    error_rate = check_finished_stream(result, reference, max_wer)
    print(f"WebM {clip}: WER {error_rate:.1%}")


def test_partial_transcripts_arrive_while_audio_is_still_streaming(pcm_server, speech_pcm):
    pcm, _ = speech_pcm("harvard")
    result = run(stream(pcm_server.ws_url, pcm, pcm=True, speed=pace(1.5)))
    assert result.partials_before_end >= 2, "expected tentative buffer_transcription updates during the stream"
    texts_during = [m for m in result.updates if any(l.get("text") for l in m["lines"])]
    assert len(texts_during) >= 2, "committed lines should grow over several updates"
    assert result.first_partial_s is not None and result.first_partial_s < 10.8 / 1.5
    # each commit measured while sending is paired with the words it added, and those words stay in the transcript
    assert len(result.commit_texts) == len(result.commit_lags_s) >= 2
    assert all(text and text in result.text for text in result.commit_texts), (result.commit_texts, result.text)


def test_a_streams_first_word_is_committed_in_its_sentence_start_spelling(pcm_server, speech_pcm):
    """At real time on an idle server, fast steps commit Harvard's first word from hypotheses with no prompt,
    which lean to " the" (0.45 against " The" 0.41): the backend spells a transcript's start capitalised
    (asr/backends/first_word.py), so the committed text reads "The birch canoe", not "the birch canoe"."""
    pcm, _ = speech_pcm("harvard")
    result = run(stream(pcm_server.ws_url, pcm[: 16000 * 2 * 4], pcm=True, speed=pace(1.0)))
    first_committed = next(m for m in result.updates if any(line.get("text") for line in m["lines"]))
    first_text = next(line["text"] for line in first_committed["lines"] if line.get("text"))
    assert first_text.split()[0] == "The", first_committed["lines"]
    assert result.text.startswith("The birch canoe"), result.text


def test_config_message_reports_the_connection_and_device(pcm_server, speech_pcm):
    pcm, _ = speech_pcm("arctic_a0009")
    result = run(stream(pcm_server.ws_url, pcm[: 16000 * 2], pcm=True, speed=pace(4.0)))
    assert result.messages[0]["type"] == "config"
    assert result.config["device"] == "cpu" and result.config["gpu_id"] is None
    assert len(result.config["connection_id"]) == 36


def test_times_are_formatted_h_mm_ss_cc(pcm_server, speech_pcm):
    pcm, _ = speech_pcm("harvard")
    result = run(stream(pcm_server.ws_url, pcm, pcm=True, speed=pace(4.0)))
    import re

    lines = [l for l in result.final["lines"] if l.get("text")]
    assert lines
    for line in lines:
        assert re.fullmatch(r"\d+:\d\d:\d\d\.\d\d", line["start"]) and re.fullmatch(r"\d+:\d\d:\d\d\.\d\d", line["end"])


def test_diff_mode_sends_a_snapshot_then_diffs_that_rebuild_the_transcript_with_words_and_language(pcm_server, speech_pcm):
    """`?mode=diff` as a WhisperLiveKit client uses it: the rebuilt lines carry the whole clip, Whisper's
    leading spaces (joined with no separator they read right), per-word times and probabilities, and
    the detected language (the server runs with `--language auto`); a diff never re-sends a line the
    client holds unchanged."""
    from conftest import wer
    from test_protocol_unit import apply

    pcm, reference = speech_pcm("harvard")
    held, rebuilt, resent = [], [], []

    def on_message(message: dict) -> None:
        nonlocal held
        if message.get("type") not in ("snapshot", "diff"):
            return
        before = held[message.get("lines_pruned", 0):]
        held = apply(message, held)
        assert len(held) == message.get("n_lines", len(held))
        new_lines = message.get("new_lines", [])
        first_new = message.get("n_lines", 0) - len(new_lines)
        if message["type"] == "diff" and new_lines and first_new < len(before) and before[first_new] == new_lines[0]:
            resent.append(new_lines[0])
        full = {key: value for key, value in message.items() if key not in ("type", "seq", "n_lines", "lines_pruned", "new_lines")}
        rebuilt.append({**full, "lines": held})

    result = run(stream(pcm_server.ws_url + "?mode=diff", pcm, pcm=True, speed=pace(3.0), on_message=on_message))
    assert result.config["mode"] == "diff" and result.messages[-1] == {"type": "ready_to_stop"}
    kinds = [m["type"] for m in result.messages if m.get("type") in ("snapshot", "diff")]
    assert kinds[0] == "snapshot" and set(kinds[1:]) == {"diff"} and len(kinds) >= 5, kinds
    assert [m["seq"] for m in result.messages if m.get("type") in ("snapshot", "diff")] == list(range(1, len(kinds) + 1))
    speech = [line for line in rebuilt[-1]["lines"] if line["speaker"] != -2]
    text = "".join(line["text"] for line in speech)
    assert text.startswith(" ") and "  " not in text and wer(reference, text) <= 0.10, text
    for line in speech:
        assert "".join(w["text"] for w in line["words"]) == line["text"]
        assert all(0.0 < w["probability"] <= 1.0 and w["start"] <= w["end"] for w in line["words"]), line["words"]
        assert line.get("detected_language") == "en", line
    assert all(line["text"] == "" for line in rebuilt[-1]["lines"] if line["speaker"] == -2)
    assert not resent, resent


def test_an_unknown_mode_is_refused_with_4400(pcm_server, speech_pcm):
    pcm, _ = speech_pcm("arctic_a0009")
    result = run(stream(pcm_server.ws_url + "?mode=delta", pcm[: 16000 * 2], pcm=True, speed=pace(4.0)))
    assert result.close_code == 4400 and "invalid mode" in result.messages[0]["error"], result.messages
