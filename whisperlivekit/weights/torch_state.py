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

# Hugging Face name pattern → our name (openai-whisper's), after any leading "model." is stripped.
HF_NAMES: Sequence[Tuple[str, str]] = (
    (r"encoder\.conv([12])\.(weight|bias)", r"encoder.conv\1.\2"),
    (r"encoder\.embed_positions\.weight", "encoder.positional_embedding"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.ln_post.\1"),
    (r"decoder\.embed_tokens\.weight", "decoder.token_embedding.weight"),
    (r"decoder\.embed_positions\.weight", "decoder.positional_embedding"),
    (r"decoder\.layer_norm\.(weight|bias)", r"decoder.ln.\1"),
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"\1.blocks.\2.attn.query.\3"),
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", r"\1.blocks.\2.attn.key.\3"),
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"\1.blocks.\2.attn.value.\3"),
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"\1.blocks.\2.attn.out.\3"),
    (r"(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"\1.blocks.\2.attn_ln.\3"),
    (r"decoder\.layers\.(\d+)\.encoder_attn\.q_proj\.(weight|bias)", r"decoder.blocks.\1.cross_attn.query.\2"),
    (r"decoder\.layers\.(\d+)\.encoder_attn\.k_proj\.(weight|bias)", r"decoder.blocks.\1.cross_attn.key.\2"),
    (r"decoder\.layers\.(\d+)\.encoder_attn\.v_proj\.(weight|bias)", r"decoder.blocks.\1.cross_attn.value.\2"),
    (r"decoder\.layers\.(\d+)\.encoder_attn\.out_proj\.(weight|bias)", r"decoder.blocks.\1.cross_attn.out.\2"),
    (r"decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(weight|bias)", r"decoder.blocks.\1.cross_attn_ln.\2"),
    (r"(encoder|decoder)\.layers\.(\d+)\.fc1\.(weight|bias)", r"\1.blocks.\2.mlp.0.\3"),
    (r"(encoder|decoder)\.layers\.(\d+)\.fc2\.(weight|bias)", r"\1.blocks.\2.mlp.2.\3"),
    (r"(encoder|decoder)\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"\1.blocks.\2.mlp_ln.\3"),
)

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
    dims, state = _to_openai(model.variables)
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
    name = hf_name[len("model."):] if hf_name.startswith("model.") else hf_name
    for pattern, replacement in HF_NAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def _load_hugging_face(directory: Path) -> WhisperWeights:
    from safetensors.torch import load_file

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

    reverse = _reverse_names(list(weights.state))
    hf_state: Tensors = {reverse[name]: tensor.contiguous() for name, tensor in weights.state.items()}
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


def _reverse_names(names: Sequence[str]) -> Dict[str, str]:
    """Our names → Hugging Face names, found by running each HF pattern's inverse over `names`."""
    inverse = (
        (r"encoder\.conv([12])\.(weight|bias)", r"model.encoder.conv\1.\2"),
        (r"encoder\.positional_embedding", "model.encoder.embed_positions.weight"),
        (r"encoder\.ln_post\.(weight|bias)", r"model.encoder.layer_norm.\1"),
        (r"decoder\.token_embedding\.weight", "model.decoder.embed_tokens.weight"),
        (r"decoder\.positional_embedding", "model.decoder.embed_positions.weight"),
        (r"decoder\.ln\.(weight|bias)", r"model.decoder.layer_norm.\1"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.attn\.query\.(weight|bias)", r"model.\1.layers.\2.self_attn.q_proj.\3"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.attn\.key\.(weight|bias)", r"model.\1.layers.\2.self_attn.k_proj.\3"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.attn\.value\.(weight|bias)", r"model.\1.layers.\2.self_attn.v_proj.\3"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.attn\.out\.(weight|bias)", r"model.\1.layers.\2.self_attn.out_proj.\3"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.attn_ln\.(weight|bias)", r"model.\1.layers.\2.self_attn_layer_norm.\3"),
        (r"decoder\.blocks\.(\d+)\.cross_attn\.query\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn.q_proj.\2"),
        (r"decoder\.blocks\.(\d+)\.cross_attn\.key\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn.k_proj.\2"),
        (r"decoder\.blocks\.(\d+)\.cross_attn\.value\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn.v_proj.\2"),
        (r"decoder\.blocks\.(\d+)\.cross_attn\.out\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn.out_proj.\2"),
        (r"decoder\.blocks\.(\d+)\.cross_attn_ln\.(weight|bias)", r"model.decoder.layers.\1.encoder_attn_layer_norm.\2"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.mlp\.0\.(weight|bias)", r"model.\1.layers.\2.fc1.\3"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.mlp\.2\.(weight|bias)", r"model.\1.layers.\2.fc2.\3"),
        (r"(encoder|decoder)\.blocks\.(\d+)\.mlp_ln\.(weight|bias)", r"model.\1.layers.\2.final_layer_norm.\3"),
    )
    out: Dict[str, str] = {}
    for name in names:
        for pattern, replacement in inverse:
            if re.fullmatch(pattern, name):
                out[name] = re.sub(pattern, replacement, name)
                break
        else:
            raise ModelLoadError(f"no Hugging Face name for {name}")
    return out
