"""Which decoder cross-attention heads follow the audio in time.

AlignAtt decides when to stop emitting tokens by where these heads look, so the
choice matters more than for word timestamps. In order of trust:

1. the heads the weights themselves carry (a CTranslate2 `config.json`, a
   Hugging Face `generation_config.json`, a `.pt` written by `whisperlivekit-convert`);
2. the heads OpenAI published per model (tiny.en, base, small, ...; the table
   `weights/alignment_heads.json` lists them as (layer, head) pairs), matched by
   name, or by the decoder's shape when the name says nothing;
3. every head of the upper half of the decoder layers (Whisper's own default),
   with a warning: it works, but stops less precisely.
"""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from typing import Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

Heads = List[Tuple[int, int]]


def published_table() -> Dict[str, Tuple[int, int, Heads]]:
    """name -> (decoder layers, heads per layer, alignment heads) of OpenAI's published models."""
    table = json.loads(resources.files("whisperlivekit.weights").joinpath("alignment_heads.json").read_text())
    return {
        name: (int(entry["decoder_layers"]), int(entry["decoder_heads"]), [(int(l), int(h)) for l, h in entry["alignment_heads"]])
        for name, entry in table.items()
    }


def _fitting(entry: Tuple[int, int, Heads], n_layer: int, n_head: int) -> Optional[Heads]:
    layers, heads, pairs = entry
    return pairs if (layers, heads) == (n_layer, n_head) else None


def canonical_name(label: Optional[str]) -> Optional[str]:
    """`faster-whisper-small`, `Systran/faster-whisper-base.en`, `small.pt` → `small`, `base.en`, `small`."""
    if not label:
        return None
    name = re.split(r"[\\/]", label.rstrip("/\\"))[-1]
    name = re.sub(r"\.pt$", "", name)
    name = re.sub(r"^(faster-)?whisper-", "", name)
    name = re.sub(r"-ct2$", "", name)
    return name or None


def published_heads(name: Optional[str], n_layer: int, n_head: int, multilingual: bool) -> Tuple[Optional[Heads], str]:
    """OpenAI's heads for this model: by name if it fits the decoder, else by shape if that is unambiguous."""
    table = published_table()
    name = canonical_name(name)
    if name in table:
        heads = _fitting(table[name], n_layer, n_head)
        if heads is not None:
            return heads, f"published heads of {name}"
    fitting = {
        candidate: heads
        for candidate, entry in table.items()
        if candidate.endswith(".en") != multilingual and (heads := _fitting(entry, n_layer, n_head)) is not None
    }
    distinct = {tuple(heads) for heads in fitting.values()}
    if len(distinct) == 1:
        candidate = sorted(fitting)[0]
        return fitting[candidate], f"published heads of {candidate} (matched by decoder shape)"
    return None, ""


def upper_half(n_layer: int, n_head: int) -> Heads:
    return [(layer, head) for layer in range(n_layer // 2, n_layer) for head in range(n_head)]


def choose_heads(
    own_heads: Optional[Heads], model_name: Optional[str], n_layer: int, n_head: int, multilingual: bool
) -> Tuple[Heads, str]:
    """The heads to use and where they came from (logged once per model load)."""
    if own_heads and all(0 <= layer < n_layer and 0 <= head < n_head for layer, head in own_heads):
        return sorted(own_heads), "the checkpoint's own heads"
    heads, source = published_heads(model_name, n_layer, n_head, multilingual)
    if heads is not None:
        return heads, source
    logger.warning(
        "no known alignment heads for model %r (%d decoder layers x %d heads): using all heads of the upper half; "
        "AlignAtt will stop less precisely", model_name, n_layer, n_head,
    )
    return upper_half(n_layer, n_head), "all heads of the upper decoder half (fallback)"
