"""Whisper weights for our PyTorch model from any of the three formats users have.

- a CTranslate2 directory (`model.bin`, `config.json`, `tokenizer.json`): what
  installs offline and what faster-whisper uses; its names are mapped by
  `convert.py`'s table (the same one that writes `.pt` files);
- an openai-whisper checkpoint (`*.pt`: `{"dims", "model_state_dict"}`), whose
  names are our model's names;
- a Hugging Face Transformers directory (`model.safetensors` + `config.json`),
  what most fine-tunes ship; `HF_NAMES` maps its names.

Everything comes back as float32 tensors under our model's names, with the
model's alignment heads (for word times) and where its `tokenizer.json` is. A
`.pt` file carries no tokenizer: `tokenizer.json` must lie beside it.
`save_hugging_face` writes the third format (tests build one from the bundled model).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from whisperlivekit.errors import ModelLoadError, ModelNotFound

Tensors = Dict[str, torch.Tensor]
Heads = List[Tuple[int, int]]

# Hugging Face name ↔ our name (openai-whisper's), without HF's leading "model.". Placeholders:
# {s} encoder|decoder, {i} a layer, {n} a conv, {p} weight|bias. One table serves both directions.
HF_NAMES: Sequence[Tuple[str, str]] = (
    ("encoder.conv{n}.{p}", "encoder.conv{n}.{p}"),
    ("encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("encoder.layer_norm.{p}", "encoder.ln_post.{p}"),
    ("decoder.embed_tokens.weight", "decoder.token_embedding.weight"),
    ("decoder.embed_positions.weight", "decoder.positional_embedding"),
    ("decoder.layer_norm.{p}", "decoder.ln.{p}"),
    ("{s}.layers.{i}.self_attn.q_proj.{p}", "{s}.blocks.{i}.attn.query.{p}"),
    ("{s}.layers.{i}.self_attn.k_proj.{p}", "{s}.blocks.{i}.attn.key.{p}"),
    ("{s}.layers.{i}.self_attn.v_proj.{p}", "{s}.blocks.{i}.attn.value.{p}"),
    ("{s}.layers.{i}.self_attn.out_proj.{p}", "{s}.blocks.{i}.attn.out.{p}"),
    ("{s}.layers.{i}.self_attn_layer_norm.{p}", "{s}.blocks.{i}.attn_ln.{p}"),
    ("decoder.layers.{i}.encoder_attn.q_proj.{p}", "decoder.blocks.{i}.cross_attn.query.{p}"),
    ("decoder.layers.{i}.encoder_attn.k_proj.{p}", "decoder.blocks.{i}.cross_attn.key.{p}"),
    ("decoder.layers.{i}.encoder_attn.v_proj.{p}", "decoder.blocks.{i}.cross_attn.value.{p}"),
    ("decoder.layers.{i}.encoder_attn.out_proj.{p}", "decoder.blocks.{i}.cross_attn.out.{p}"),
    ("decoder.layers.{i}.encoder_attn_layer_norm.{p}", "decoder.blocks.{i}.cross_attn_ln.{p}"),
    ("{s}.layers.{i}.fc1.{p}", "{s}.blocks.{i}.mlp.0.{p}"),
    ("{s}.layers.{i}.fc2.{p}", "{s}.blocks.{i}.mlp.2.{p}"),
    ("{s}.layers.{i}.final_layer_norm.{p}", "{s}.blocks.{i}.mlp_ln.{p}"),
)
_PLACEHOLDERS = {"s": "encoder|decoder", "i": r"\d+", "n": "[12]", "p": "weight|bias"}


def _rename(name: str, to_ours: bool) -> Optional[str]:
    """`name` in the other naming of `HF_NAMES`, or None if no row matches."""
    for hf, ours in HF_NAMES:
        source, target = (hf, ours) if to_ours else (ours, hf)
        pattern = re.escape(source)
        for key, alternatives in _PLACEHOLDERS.items():
            pattern = pattern.replace(re.escape("{" + key + "}"), f"(?P<{key}>{alternatives})")
        match = re.fullmatch(pattern, name)
        if match:
            return target.format(**match.groupdict())
    return None


# Hugging Face config field → our dims field.
HF_DIMS = {
    "num_mel_bins": "n_mels", "max_source_positions": "n_audio_ctx", "d_model": "n_audio_state",
    "encoder_attention_heads": "n_audio_head", "encoder_layers": "n_audio_layer", "vocab_size": "n_vocab",
    "max_target_positions": "n_text_ctx", "decoder_attention_heads": "n_text_head", "decoder_layers": "n_text_layer",
}


@dataclass
class WhisperWeights:
    """A model's dims, its float32 state dict under our names, alignment heads (None: not known), tokenizer."""

    dims: Dict[str, int]
    state: Tensors
    alignment_heads: Optional[Heads]
    tokenizer_file: Path
    source_format: str  # "ctranslate2", "openai", "huggingface"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ModelLoadError(f"{path.name} is missing in {path.parent}")
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc


def decode_heads_mask(dump: str, n_text_layer: int, n_text_head: int) -> Heads:
    """The (layer, head) pairs of openai-whisper's base85-of-gzipped-bool-mask dump."""
    mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool).reshape(n_text_layer, n_text_head)
    return [(int(layer), int(head)) for layer, head in zip(*np.nonzero(mask))]


def _float32(state: Tensors) -> Tensors:
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def _load_ctranslate2(directory: Path) -> WhisperWeights:
    from whisperlivekit.weights.convert import _to_openai
    from whisperlivekit.weights.ctranslate2_file import read_ctranslate2_model

    config = _read_json(_require(directory / "config.json"))
    model = read_ctranslate2_model(directory / "model.bin")
    if model.spec_name != "WhisperSpec":
        raise ModelLoadError(f"{directory / 'model.bin'} holds a {model.spec_name}, not a Whisper model")
    dims, state = _to_openai(model.variables, copy=False)  # `_float32` copies once, where a copy is needed
    heads = [(int(l), int(h)) for l, h in config.get("alignment_heads") or []] or None
    return WhisperWeights(dims, _float32(state), heads, _require(directory / "tokenizer.json"), "ctranslate2")


def _load_openai(checkpoint: Path) -> WhisperWeights:
    from whisperlivekit.weights.convert import ALIGNMENT_HEADS_KEY

    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError for files it cannot read
        raise ModelLoadError(f"{checkpoint} is not a readable openai-whisper checkpoint: {exc}") from exc
    if not isinstance(data, dict) or "dims" not in data or "model_state_dict" not in data:
        raise ModelLoadError(f"{checkpoint} is not an openai-whisper checkpoint (no dims/model_state_dict)")
    dims = {k: int(v) for k, v in data["dims"].items()}
    dump = data.get(ALIGNMENT_HEADS_KEY)
    heads = decode_heads_mask(dump, dims["n_text_layer"], dims["n_text_head"]) if isinstance(dump, str) else None
    tokenizer = checkpoint.parent / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelLoadError(f"{checkpoint} carries no tokenizer: put the model's tokenizer.json beside it")
    return WhisperWeights(dims, _float32(data["model_state_dict"]), heads, tokenizer, "openai")


def _our_name(hf_name: str) -> Optional[str]:
    return _rename(hf_name[len("model."):] if hf_name.startswith("model.") else hf_name, to_ours=True)


def _load_hugging_face(directory: Path) -> WhisperWeights:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelLoadError(f"{directory} holds Hugging Face weights, read with safetensors: pip install safetensors") from exc

    config = _read_json(_require(directory / "config.json"))
    if config.get("model_type") != "whisper":
        raise ModelLoadError(f"{directory / 'config.json'} describes a {config.get('model_type')!r} model, not whisper")
    dims = {ours: int(config[theirs]) for theirs, ours in HF_DIMS.items()}
    dims["n_audio_state"] = dims["n_text_state"] = int(config["d_model"])
    state: Tensors = {}
    for hf_name, tensor in load_file(str(_require(directory / "model.safetensors"))).items():
        name = _our_name(hf_name)
        if name is not None:
            state[name] = tensor
        elif hf_name != "proj_out.weight":  # the output projection is tied to the token embedding
            raise ModelLoadError(f"model.safetensors has a tensor this loader does not map: {hf_name}")
    heads = None
    generation = directory / "generation_config.json"
    if generation.is_file():
        heads = [(int(l), int(h)) for l, h in _read_json(generation).get("alignment_heads") or []] or None
    return WhisperWeights(dims, _float32(state), heads, _require(directory / "tokenizer.json"), "huggingface")


def load_whisper_weights(model_path: Path) -> WhisperWeights:
    """Read `model_path` (CTranslate2 directory, Hugging Face directory or `.pt` file) into our names."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise ModelNotFound(f"{model_path} does not exist")
    if model_path.is_file():
        return _load_openai(model_path)
    if (model_path / "model.bin").is_file():
        return _load_ctranslate2(model_path)
    if (model_path / "model.safetensors").is_file():
        return _load_hugging_face(model_path)
    raise ModelLoadError(
        f"{model_path} is not a Whisper model: expected model.bin (CTranslate2), model.safetensors + config.json "
        "(Hugging Face) or a .pt checkpoint"
    )


def save_hugging_face(weights: WhisperWeights, out_dir: Path) -> Path:
    """Write `weights` as a Hugging Face Transformers Whisper directory (the reverse of `HF_NAMES`)."""
    from safetensors.torch import save_file

    hf_state: Tensors = {}
    for name, tensor in weights.state.items():
        hf_name = _rename(name, to_ours=False)
        if hf_name is None:
            raise ModelLoadError(f"no Hugging Face name for {name}")
        hf_state[f"model.{hf_name}"] = tensor.contiguous()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(hf_state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    dims = weights.dims
    config = {theirs: dims[ours] for theirs, ours in HF_DIMS.items()}
    config.update({
        "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
        "d_model": dims["n_text_state"], "encoder_ffn_dim": 4 * dims["n_audio_state"],
        "decoder_ffn_dim": 4 * dims["n_text_state"], "activation_function": "gelu", "scale_embedding": False,
        "tie_word_embeddings": True, "torch_dtype": "float32",
    })
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    if weights.alignment_heads:
        (out_dir / "generation_config.json").write_text(
            json.dumps({"alignment_heads": [list(pair) for pair in weights.alignment_heads]}, indent=2)
        )
    shutil.copyfile(weights.tokenizer_file, out_dir / "tokenizer.json")
    return out_dir
