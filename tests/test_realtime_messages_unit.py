"""OpenAI Realtime's wire format without a server: session updates in both shapes, client event
parsing, engine events → server events, and the error table's Realtime column."""

from __future__ import annotations

import base64

import pytest

from whisperlivekit import errors
from whisperlivekit.api import errors as error_table
from whisperlivekit.api.realtime_messages import (
    RealtimeTranslator, SessionConfig, TurnDetection, apply_update, audio_of, parse_event, session_object,
)
from whisperlivekit.asr.types import Word
from whisperlivekit.errors import BadEvent, BadParameters
from whisperlivekit.events import BY_END, BY_FINALIZE, BY_VAD, Committed, SpeechStarted, SpeechStopped


def _ga(audio_input: dict) -> dict:
    return {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio_input}}}


def _words(*texts: str, start_s: float = 0.0) -> tuple:
    return tuple(Word(start_s + i * 0.3, start_s + i * 0.3 + 0.25, text, 0.9) for i, text in enumerate(texts))


def test_the_ga_session_update_sets_rate_language_and_manual_turns():
    config = apply_update(SessionConfig(), _ga({"format": {"type": "audio/pcm", "rate": 16000},
                                                "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                                                "turn_detection": None}))
    assert (config.rate_hz, config.language, config.model, config.turn_detection) == (16_000, "en", "gpt-4o-transcribe", None)
    shown = session_object(config, "sess_1", "en")
    assert shown["type"] == "transcription" and shown["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}


def test_the_older_shape_is_read_and_answered_in_its_own_shape():
    config = apply_update(SessionConfig(rate_hz=16_000), {"type": "transcription_session.update", "session": {
        "input_audio_format": "pcm16", "turn_detection": {"type": "server_vad", "silence_duration_ms": 800}}})
    assert config.legacy and config.rate_hz == 24_000
    assert config.turn_detection == TurnDetection(silence_duration_ms=800)
    shown = session_object(config, "sess_1", None)
    assert shown["input_audio_format"] == "pcm16" and shown["turn_detection"]["silence_duration_ms"] == 800


@pytest.mark.parametrize("audio_input", [
    {"format": {"type": "audio/pcmu"}}, {"format": {"type": "audio/pcm", "rate": 8000}},
    {"turn_detection": {"type": "semantic_vad"}}, {"turn_detection": {"type": "server_vad", "threshold": 2}},
])
def test_unsupported_session_settings_are_bad_parameters(audio_input):
    with pytest.raises(BadParameters):
        apply_update(SessionConfig(), _ga(audio_input))


def test_a_malformed_session_is_a_bad_event():
    with pytest.raises(BadEvent):
        apply_update(SessionConfig(), {"type": "session.update", "session": "transcription"})


@pytest.mark.parametrize("text,param", [("not json", None), ("[1]", "type"), ('{"type": "response.create"}', "type")])
def test_events_that_are_not_client_events_are_refused(text, param):
    with pytest.raises(BadEvent) as refused:
        parse_event(text)
    assert refused.value.param == param


def test_appended_audio_must_be_base64_of_whole_samples():
    assert audio_of({"audio": base64.b64encode(b"\x01\x02\x03\x04").decode()}) == b"\x01\x02\x03\x04"
    for audio in ("%%%", base64.b64encode(b"\x01\x02\x03").decode(), None):
        with pytest.raises(BadEvent):
            audio_of({"audio": audio})


def test_server_vad_turns_are_started_stopped_committed_then_completed():
    translator = RealtimeTranslator(SessionConfig())
    started = translator.on_event(SpeechStarted(1.0))[0]
    assert started["type"] == "input_audio_buffer.speech_started" and started["audio_start_ms"] == 700
    delta = translator.on_event(Committed(_words(" Hello", " world.", start_s=1.0)))[0]
    stopped, committed = translator.on_event(SpeechStopped(2.5))
    assert [stopped["type"], committed["type"]] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    assert delta["item_id"] == stopped["item_id"] == committed["item_id"] == started["item_id"]
    late_delta, completed = translator.on_event(Committed(_words(" Bye.", start_s=2.0), BY_VAD))
    assert late_delta["item_id"] == committed["item_id"]  # words of a closing turn stay in it
    assert completed["transcript"] == "Hello world. Bye." and completed["usage"]["seconds"] == pytest.approx(1.25)
    translator.on_event(SpeechStarted(4.0))
    _, second = translator.on_event(SpeechStopped(5.0))
    assert second["previous_item_id"] == committed["item_id"]


def test_without_turn_detection_only_the_clients_commit_ends_a_turn():
    translator = RealtimeTranslator(SessionConfig(turn_detection=None))
    assert translator.on_event(SpeechStarted(0.5)) == [] and translator.on_event(SpeechStopped(2.0)) == []
    first = translator.on_event(Committed(_words(" One."), BY_VAD))
    assert [e["type"] for e in first] == ["conversation.item.input_audio_transcription.delta"]  # no completion at a pause
    translator.on_event(Committed(_words(" Two.", start_s=3.0)))
    committed = translator.commit()
    completed = translator.on_event(Committed((), BY_FINALIZE))[-1]
    assert completed["item_id"] == committed["item_id"] and completed["transcript"] == "One. Two."


def test_clear_drops_the_open_turn_and_the_end_of_the_stream_completes_the_last_one():
    translator = RealtimeTranslator(SessionConfig(turn_detection=None))
    translator.on_event(Committed(_words(" Dropped")))
    translator.clear()
    assert translator.on_event(Committed(_words(" also", " dropped."), BY_FINALIZE)) == []
    translator.on_event(Committed(_words(" Kept.")))
    ending = translator.on_event(Committed((), BY_END))
    assert [e["type"] for e in ending] == ["input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed"]
    assert ending[-1]["transcript"] == "Kept."


def test_every_error_has_a_realtime_code_and_an_openai_type():
    assert set(error_table.REALTIME_ERROR_CODES) == set(error_table.ENDINGS)
    refused = error_table.realtime_error(errors.NoCapacity("No GPU available"))
    assert refused == {"type": "server_error", "code": "server_overloaded", "message": "No GPU available",
                       "param": None, "event_id": None}
    assert error_table.realtime_error(errors.Unauthorized("Unauthorized"))["code"] == "invalid_api_key"
    assert error_table.realtime_error(ValueError("secret detail"))["message"] == "internal error (see the server log)"
