"""Which decoder cross-attention heads follow the audio in time.

AlignAtt decides when to stop emitting tokens by where these heads look, so the
choice matters more than for word timestamps. In order of trust:

1. the heads the checkpoint itself carries (a converted CTranslate2 model keeps
   the ones its `config.json` lists, see `convert.py`);
2. the heads OpenAI published per model (tiny.en, base, small, ...), read from
   the installed openai-whisper package and matched by name, or by the
   decoder's shape when the name says nothing;
3. every head of the upper half of the decoder layers (Whisper's own default),
   with a warning: it works, but stops less precisely.
"""

from __future__ import annotations

import base64
import gzip
import logging
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

Heads = List[Tuple[int, int]]


def decode_heads(dump: "str | bytes", n_layer: int, n_head: int) -> Optional[Heads]:
    """(layer, head) pairs of a base85-gzip boolean mask, or None if it does not fit this decoder."""
    try:
        mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
    except (ValueError, OSError, EOFError):
        return None
    if mask.size != n_layer * n_head or not mask.any():
        return None
    layers, heads = np.nonzero(mask.reshape(n_layer, n_head))
    return [(int(layer), int(head)) for layer, head in zip(layers, heads)]


def published_dumps() -> Dict[str, bytes]:
    """OpenAI's per-model heads as shipped in openai-whisper (empty if that table ever moves)."""
    try:
        import whisper  # type: ignore[import-not-found]
    except ImportError:
        return {}
    table = getattr(whisper, "_ALIGNMENT_HEADS", None)
    return dict(table) if isinstance(table, dict) else {}


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
    dumps = published_dumps()
    name = canonical_name(name)
    if name in dumps:
        heads = decode_heads(dumps[name], n_layer, n_head)
        if heads is not None:
            return heads, f"published heads of {name}"
    fitting = {
        candidate: heads
        for candidate, dump in dumps.items()
        if candidate.endswith(".en") != multilingual and (heads := decode_heads(dump, n_layer, n_head)) is not None
    }
    distinct = {tuple(heads) for heads in fitting.values()}
    if len(distinct) == 1:
        candidate = sorted(fitting)[0]
        return fitting[candidate], f"published heads of {candidate} (matched by decoder shape)"
    return None, ""


def upper_half(n_layer: int, n_head: int) -> Heads:
    return [(layer, head) for layer in range(n_layer // 2, n_layer) for head in range(n_head)]


def choose_heads(
    checkpoint_dump: Optional[str], model_name: Optional[str], n_layer: int, n_head: int, multilingual: bool
) -> Tuple[Heads, str]:
    """The heads to use and where they came from (logged once per model load)."""
    if checkpoint_dump:
        heads = decode_heads(checkpoint_dump, n_layer, n_head)
        if heads is not None:
            return heads, "the checkpoint's own heads"
    heads, source = published_heads(model_name, n_layer, n_head, multilingual)
    if heads is not None:
        return heads, source
    logger.warning(
        "no known alignment heads for model %r (%d decoder layers x %d heads): using all heads of the upper half; "
        "AlignAtt will stop less precisely", model_name, n_layer, n_head,
    )
    return upper_half(n_layer, n_head), "all heads of the upper decoder half (fallback)"
