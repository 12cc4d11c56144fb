"""Forcing the committed words as the decoder's prefix: the same transcript as decoding them again,
with fewer tokens decoded one by one. Real tiny.en (faster-whisper) on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
from whisperlivekit.asr.policies.local_agreement import LocalAgreementPolicy
from whisperlivekit.asr.types import TranscribeRequest
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.client import pcm_to_float
from whisperlivekit.weights.resolve import resolve_model


@pytest.fixture(scope="module")
def backend():
    return FasterWhisperBackend(resolve_model("tiny.en"), device="cpu", cpu_threads=1)


def _stream(backend, audio: np.ndarray, force_prefix: bool):
    """The clip through LocalAgreement at 1 s steps, off the clock: (transcript, tokens decoded per step)."""
    policy = LocalAgreementPolicy(language="en", force_prefix=force_prefix)
    decoded = []
    for start in range(0, len(audio), SAMPLE_RATE):
        policy.append_audio(audio[start:start + SAMPLE_RATE])
        result = backend.transcribe_batch([policy.next_request()])[0]
        assert not result.retried, "the degenerate-output retry fired on healthy speech"
        decoded.append(result.decoded_tokens)
        policy.apply(result)
    policy.finish()
    return "".join(w.text for w in policy.committed), decoded


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["harvard", "arctic_a0009"])
def test_forcing_the_committed_words_gives_the_transcript_of_full_decoding_with_fewer_decoded_tokens(backend, speech_pcm, clip):
    audio = pcm_to_float(speech_pcm(clip)[0])
    forced, forced_tokens = _stream(backend, audio, force_prefix=True)
    full, full_tokens = _stream(backend, audio, force_prefix=False)
    assert forced == full
    assert sum(forced_tokens) < sum(full_tokens)


def test_a_prefix_of_different_length_per_row_batches_like_each_row_alone(backend, speech_pcm):
    audio = pcm_to_float(speech_pcm("harvard")[0])[: 6 * SAMPLE_RATE]
    requests = [TranscribeRequest(audio, language="en", prefix=p) for p in ("", " The birch", " The birch canoe slid")]
    alone = [backend.transcribe_batch([r])[0] for r in requests]
    together = backend.transcribe_batch(requests)
    assert [r.text for r in together] == [r.text for r in alone]
    assert len({r.text for r in alone}) == 1, "a true prefix does not change the transcript"
    assert alone[0].decoded_tokens > alone[1].decoded_tokens > alone[2].decoded_tokens


def test_a_step_that_says_its_last_sentence_again_after_the_audio_ends_keeps_one_copy_without_a_retry(backend, speech_pcm):
    """A step of the looped test clips at 0.4-1 s steps (captured from scripts/bench_streams.py's audio):
    tiny.en heard Harvard's last three sentences with the first two forced and the call's text as prompt,
    then said "Four hours of steady work faced us." again. Retried on the full window that cost 4-5 steps
    (the commit-lag outliers at N = 1); the first copy is what the retry mostly gave back."""
    audio = pcm_to_float(speech_pcm("harvard")[0])[int(2.725 * SAMPLE_RATE):][:127_679]
    prompt = ("of a well. Four hours of steady work faced us. And you always want to see it in the superlative degree. "
              "He turned sharply and faced Gregson across the table. The butch canoe slid on the smooth planks.")
    prefix = " Glue the sheet to the dark blue background. It's easy to tell the depth of a well. Four hours of steady work"
    result = backend.transcribe_batch([TranscribeRequest(audio, prompt=prompt, language="en", prefix=prefix)])[0]
    assert result.loop_cut and not result.retried and not result.degenerate
    assert result.text.endswith("Four hours of steady work faced us."), result.text
    assert result.text.lower().count("four hours") == 1, result.text
    assert len(audio) / SAMPLE_RATE - 1.0 < result.words[-1].end <= len(audio) / SAMPLE_RATE
