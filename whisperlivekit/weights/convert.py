"""Convert CTranslate2 Whisper weights into an openai-whisper checkpoint.

No package registry ships openai-whisper `.pt` files, but the CTranslate2 weights
that do install offline hold the same tensors under other names, some fused.
This module renames and splits them into `{"dims": ..., "model_state_dict": ...}`,
the file `whisper.load_model(path)` accepts (plus the model's alignment heads).
No backend needs the result: our PyTorch Whisper reads CTranslate2 folders
directly through the same table (`torch_state.py`). `whisperlivekit-convert` is a
tool for people who want a `.pt` for other software.

Mapping (CTranslate2 → openai-whisper), per block:
- `self_attention/linear_0` is the fused `[q; k; v]` projection → `attn.query|key|value`;
  `linear_1` → `attn.out`;
- `attention/linear_0` → `cross_attn.query`, `linear_1` the fused `[k; v]` →
  `cross_attn.key|value`, `linear_2` → `cross_attn.out`;
- `ffn/linear_0|1` → `mlp.0|2`; layer norms' `gamma|beta` → `weight|bias`.
Key projections have no bias in openai-whisper. Dropping CTranslate2's key bias
is exact whatever its value: it adds the same `q·b` to every logit of a softmax row.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from whisperlivekit.weights.ctranslate2_file import read_ctranslate2_model
from whisperlivekit.errors import ModelLoadError, ModelNotFound, WhisperLiveKitError

logger = logging.getLogger(__name__)

ALIGNMENT_HEADS_KEY = "alignment_heads"

Tensors = Dict[str, torch.Tensor]


class _Mapper:
    """Moves CTranslate2 variables into an openai-whisper state dict, tracking what was used."""

    def __init__(self, variables: Tensors, copy: bool = True) -> None:
        self.variables = variables
        self.copy = copy
        self.used: set = set()
        self.state: Tensors = {}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.variables:
            raise ModelLoadError(f"model.bin has no variable {name}: not a Whisper model in the expected layout")
        self.used.add(name)
        return self.variables[name]

    def put(self, name: str, tensor: torch.Tensor) -> None:
        # clone: a slice of a fused tensor would otherwise save the whole fused storage (loading needs no copy)
        self.state[name] = tensor.contiguous().clone() if self.copy else tensor

    def linear(self, src: str, dst: str) -> None:
        self.put(f"{dst}.weight", self.get(f"{src}/weight"))
        self.put(f"{dst}.bias", self.get(f"{src}/bias"))

    def layer_norm(self, src: str, dst: str) -> None:
        self.put(f"{dst}.weight", self.get(f"{src}/gamma"))
        self.put(f"{dst}.bias", self.get(f"{src}/beta"))

    def key_value(self, weight: torch.Tensor, bias: torch.Tensor, dst: str) -> None:
        (k_w, v_w), (_k_b, v_b) = weight.chunk(2), bias.chunk(2)
        self.put(f"{dst}.key.weight", k_w)
        self.put(f"{dst}.value.weight", v_w)
        self.put(f"{dst}.value.bias", v_b)

    def self_attention(self, src: str, dst: str) -> None:
        weight, bias = self.get(f"{src}/linear_0/weight"), self.get(f"{src}/linear_0/bias")
        n_state = weight.shape[1]
        self.put(f"{dst}.query.weight", weight[:n_state])
        self.put(f"{dst}.query.bias", bias[:n_state])
        self.key_value(weight[n_state:], bias[n_state:], dst)
        self.linear(f"{src}/linear_1", f"{dst}.out")

    def cross_attention(self, src: str, dst: str) -> None:
        self.linear(f"{src}/linear_0", f"{dst}.query")
        self.key_value(self.get(f"{src}/linear_1/weight"), self.get(f"{src}/linear_1/bias"), dst)
        self.linear(f"{src}/linear_2", f"{dst}.out")

    def block(self, src: str, dst: str, cross: bool) -> None:
        self.layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        self.self_attention(f"{src}/self_attention", f"{dst}.attn")
        if cross:
            self.layer_norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
            self.cross_attention(f"{src}/attention", f"{dst}.cross_attn")
        self.layer_norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
        self.linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
        self.linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")


def _count_layers(variables: Tensors, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    return len({match.group(1) for match in map(pattern.match, variables) if match})


def _to_openai(variables: Tensors, copy: bool = True) -> Tuple[Dict[str, int], Tensors]:
    """(dims, state_dict) of the openai-whisper model holding these CTranslate2 variables.

    `copy=False` (loading into a model, not saving a file) leaves slices of fused tensors as views."""
    m = _Mapper(variables, copy)
    n_audio_layer, n_text_layer = _count_layers(variables, "encoder"), _count_layers(variables, "decoder")
    m.linear("encoder/conv1", "encoder.conv1")
    m.linear("encoder/conv2", "encoder.conv2")
    m.put("encoder.positional_embedding", m.get("encoder/position_encodings/encodings"))
    for i in range(n_audio_layer):
        m.block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    m.layer_norm("encoder/layer_norm", "encoder.ln_post")
    m.put("decoder.token_embedding.weight", m.get("decoder/embeddings/weight"))
    m.put("decoder.positional_embedding", m.get("decoder/position_encodings/encodings"))
    for i in range(n_text_layer):
        m.block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    m.layer_norm("decoder/layer_norm", "decoder.ln")

    projection = variables.get("decoder/projection/weight")
    if projection is not None:  # openai-whisper ties the output projection to the token embedding
        m.used.add("decoder/projection/weight")
        embedding = m.state["decoder.token_embedding.weight"]
        if not (torch.equal(projection, embedding)  # what CTranslate2 writes: the same values; cheap to check
                or torch.allclose(projection.float(), embedding.float(), atol=1e-3)):
            raise ModelLoadError("the output projection is not the token embedding; openai-whisper cannot hold it")
    leftover = sorted(n for n, t in variables.items() if t.dim() > 0 and n not in m.used)
    if leftover:
        raise ModelLoadError(f"model.bin has variables this converter does not map: {', '.join(leftover[:5])}")

    conv1 = m.state["encoder.conv1.weight"]
    audio_pos, text_pos = m.state["encoder.positional_embedding"], m.state["decoder.positional_embedding"]
    dims = {
        "n_mels": conv1.shape[1],
        "n_audio_ctx": audio_pos.shape[0],
        "n_audio_state": audio_pos.shape[1],
        "n_audio_head": int(m.get("encoder/num_heads")),
        "n_audio_layer": n_audio_layer,
        "n_vocab": m.state["decoder.token_embedding.weight"].shape[0],
        "n_text_ctx": text_pos.shape[0],
        "n_text_state": text_pos.shape[1],
        "n_text_head": int(m.get("decoder/num_heads")),
        "n_text_layer": n_text_layer,
    }
    return dims, m.state


def encode_alignment_heads(heads: Sequence[Sequence[int]], n_text_layer: int, n_text_head: int) -> str:
    """(layer, head) pairs in the form `Whisper.set_alignment_heads` takes: base85 of a gzipped bool mask."""
    mask = torch.zeros(n_text_layer, n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.numpy().tobytes())).decode("ascii")


def convert_ctranslate2_to_openai(
    src_dir: Path, dst_file: Path, report: Optional[Callable[[str], None]] = None
) -> Path:
    """Write the openai-whisper checkpoint for the CTranslate2 model in `src_dir` to `dst_file`.

    The file appears atomically, so concurrent converters never leave a half-written checkpoint.
    """
    src_dir, dst_file = Path(src_dir), Path(dst_file)
    say = report or logger.info
    if not src_dir.exists():
        raise ModelNotFound(f"{src_dir} does not exist")
    model_bin, config_json = src_dir / "model.bin", src_dir / "config.json"
    for needed in (model_bin, config_json):
        if not needed.is_file():
            raise ModelLoadError(f"{src_dir} is not a CTranslate2 model directory: {needed.name} is missing")
    try:
        config = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_json} is not valid JSON: {exc}") from exc

    started = time.perf_counter()
    model = read_ctranslate2_model(model_bin)
    if model.spec_name != "WhisperSpec":
        raise ModelLoadError(f"{model_bin} holds a {model.spec_name}, not a Whisper model")
    say(f"read {model_bin} ({model_bin.stat().st_size / 1e6:.1f} MB, {len(model.variables)} variables, "
        f"stored as {'/'.join(model.stored_dtypes)}) in {time.perf_counter() - started:.2f} s")

    dims, state = _to_openai(model.variables)
    checkpoint: dict = {"dims": dims, "model_state_dict": state}
    if config.get("alignment_heads"):
        checkpoint[ALIGNMENT_HEADS_KEY] = encode_alignment_heads(
            config["alignment_heads"], dims["n_text_layer"], dims["n_text_head"]
        )
    say(f"mapped {len(state)} tensors: {dims}")

    dst_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst_file.name}.", suffix=".tmp", dir=dst_file.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save(checkpoint, out)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a model cache is not secret
        os.replace(tmp_name, dst_file)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    say(f"wrote {dst_file} ({dst_file.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.2f} s total")
    return dst_file


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whisperlivekit-convert",
        description="Convert a CTranslate2 (faster-whisper) Whisper directory into an openai-whisper .pt checkpoint.",
    )
    parser.add_argument("src_dir", type=Path, help="directory holding model.bin and config.json")
    parser.add_argument("out", type=Path, help="checkpoint file to write, e.g. tiny.en.pt")
    args = parser.parse_args(argv)
    try:
        convert_ctranslate2_to_openai(args.src_dir, args.out, report=lambda line: print(line, flush=True))
    except WhisperLiveKitError as exc:
        print(f"whisperlivekit-convert: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
