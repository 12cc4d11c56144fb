"""`/asr` query parameters: a language is accepted only if the model knows it, matched whole."""

from __future__ import annotations

import pytest

from whisperlivekit.api.params import parse_language
from whisperlivekit.errors import BadParameters
from whisperlivekit.weights.languages import ENGLISH_ONLY, WHISPER_LANGUAGES, is_multilingual, model_languages


def test_a_multilingual_model_accepts_each_whisper_language_and_auto():
    assert parse_language("fr", "auto", WHISPER_LANGUAGES, "small") == "fr"
    assert parse_language("yue", "auto", WHISPER_LANGUAGES, "small") == "yue"
    assert parse_language("auto", "en", WHISPER_LANGUAGES, "small") is None


def test_no_language_in_the_query_means_the_server_default():
    assert parse_language(None, "de", WHISPER_LANGUAGES, "small") == "de"
    assert parse_language("", "auto", WHISPER_LANGUAGES, "small") is None


@pytest.mark.parametrize("requested", ["en\n", "xx", "zzz-ABCD", "en-US", "EN", "english"])
def test_unknown_codes_are_refused_with_the_list_of_allowed_ones(requested):
    with pytest.raises(BadParameters) as refused:
        parse_language(requested, "auto", WHISPER_LANGUAGES, "small")
    message = str(refused.value)
    assert f"invalid language {requested!r}" in message
    assert "'auto'" in message and "fr, " in message and f"{len(WHISPER_LANGUAGES)} languages" in message


def test_an_english_only_model_refuses_french_and_says_why():
    with pytest.raises(BadParameters, match="tiny.en is English-only; use 'en' or 'auto'"):
        parse_language("fr", "auto", ENGLISH_ONLY, "tiny.en")
    assert parse_language("en", "auto", ENGLISH_ONLY, "tiny.en") == "en"


@pytest.mark.parametrize("entries, multilingual, languages", [(51_864, False, 1), (51_865, True, 99), (51_866, True, 100)])
def test_a_ctranslate2_folder_is_multilingual_from_its_vocabulary_size(tmp_path, entries, multilingual, languages):
    (tmp_path / "vocabulary.txt").write_text("tok\n" * entries)
    assert is_multilingual(tmp_path, "any-name") is multilingual
    allowed = model_languages(tmp_path)
    assert len(allowed) == languages and "en" in allowed
    assert ("yue" in allowed) is (languages == 100)  # Cantonese only from large-v3 on


def test_a_checkpoint_file_is_english_only_when_named_dot_en(tmp_path):
    assert is_multilingual(tmp_path / "small.en.pt") is False
    assert is_multilingual(tmp_path / "small.pt") is True
    assert len(WHISPER_LANGUAGES) >= 99 and {"en", "fr", "de", "ja", "haw"} <= WHISPER_LANGUAGES
