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

from conftest import wer


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


@pytest.mark.slow
def test_loops_past_the_end_of_the_audio_are_cut_without_a_retry_on_the_looped_test_clips(backend, speech_pcm):
    """The test clips twice over (36 s, what scripts/bench_streams.py --loop streams) at 0.5 s steps: tiny.en
    says the last sentence again, or loops its last words, on a few steps. Each is cut to its first copy
    (`degenerate.cut_tail_loop`) instead of a retry on the full window, which cost 4-5 steps. A single
    captured step is no test: whether tiny.en loops on it flips with noise at -70 dB (2-4 cuts here over
    four noise draws, 0 retries, WER 0 %; the code before it: 0 cuts and 2 retries on the clean audio)."""
    clips = [speech_pcm(name) for name in ("harvard", "arctic_a0007", "arctic_a0009")]
    audio = np.concatenate([pcm_to_float(pcm) for pcm, _ in clips] * 2)
    reference = " ".join([text for _, text in clips] * 2)
    policy = LocalAgreementPolicy(language="en", agreement_spacing_s=0.9)
    results = []
    for start in range(0, len(audio), SAMPLE_RATE // 2):
        policy.append_audio(audio[start:start + SAMPLE_RATE // 2])
        results.append(backend.transcribe_batch([policy.next_request()])[0])
        policy.apply(results[-1])
    policy.finish()
    assert sum(r.loop_cut for r in results) >= 1
    assert not any(r.retried for r in results), [r.text for r in results if r.retried]
    assert wer(reference, "".join(w.text for w in policy.committed)) <= 0.05
