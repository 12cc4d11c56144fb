"""Real speech streamed to a real server, as a browser or script would, scored by WER."""

from __future__ import annotations

import pytest

from conftest import run
from helpers import check_finished_stream
from whisperlivekit.client import stream

CLIPS = [("harvard", 0.10), ("arctic_a0007", 0.10), ("arctic_a0009", 0.10),
         pytest.param("pyannote", 0.25, marks=pytest.mark.slow)]  # a 30 s call




@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_pcm_stream_is_transcribed_within_wer_bound(pcm_server, speech_pcm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    result = run(stream(pcm_server.ws_url, pcm, pcm=True, speed=3.0))
    assert result.config["useAudioWorklet"] is True
    error_rate = check_finished_stream(result, reference, max_wer)
    print(f"PCM {clip}: WER {error_rate:.1%}")


@pytest.mark.parametrize("clip,max_wer", CLIPS)
def test_webm_opus_stream_is_transcribed_within_wer_bound(webm_server, speech_pcm, webm, clip, max_wer):
    pcm, reference = speech_pcm(clip)
    result = run(stream(webm_server.ws_url, webm(pcm), pcm=False, speed=3.0))
    assert result.config["useAudioWorklet"] is False
    error_rate = check_finished_stream(result, reference, max_wer)
    print(f"WebM {clip}: WER {error_rate:.1%}")


def test_partial_transcripts_arrive_while_audio_is_still_streaming(pcm_server, speech_pcm):
    pcm, _ = speech_pcm("harvard")
    result = run(stream(pcm_server.ws_url, pcm, pcm=True, speed=1.5))
    assert result.partials_before_end >= 2, "expected tentative buffer_transcription updates during the stream"
    texts_during = [m for m in result.updates if any(l.get("text") for l in m["lines"])]
    assert len(texts_during) >= 2, "committed lines should grow over several updates"
    assert result.first_partial_s is not None and result.first_partial_s < 10.8 / 1.5


def test_config_message_reports_the_connection_and_device(pcm_server, speech_pcm):
    pcm, _ = speech_pcm("arctic_a0009")
    result = run(stream(pcm_server.ws_url, pcm[: 16000 * 2], pcm=True, speed=4.0))
    assert result.messages[0]["type"] == "config"
    assert result.config["device"] == "cpu" and result.config["gpu_id"] is None
    assert len(result.config["connection_id"]) == 36


def test_times_are_formatted_h_mm_ss_cc(pcm_server, speech_pcm):
    pcm, _ = speech_pcm("harvard")
    result = run(stream(pcm_server.ws_url, pcm, pcm=True, speed=4.0))
    import re

    lines = [l for l in result.final["lines"] if l.get("text")]
    assert lines
    for line in lines:
        assert re.fullmatch(r"\d+:\d\d:\d\d\.\d\d", line["start"]) and re.fullmatch(r"\d+:\d\d:\d\d\.\d\d", line["end"])
