"""Whisper's encoder and text decoder written out, so one call can see its own cross-attention.

AlignAtt needs, for every token it emits, where the alignment heads look in the
audio. openai-whisper exposes that only through forward hooks (or a class-wide
switch that disables SDPA), both global to the shared model: two streams
decoding at once on a device's lanes would read each other's attention. This
module runs the same weights through the same arithmetic, but returns the
attention of the chosen heads with the logits and keeps the self-attention
key/value cache in a value the caller owns. Nothing is stored on the model.

`encode` runs the encoder on a window shorter than Whisper's 30 s (its
positional embedding sliced): a streaming buffer is mostly a few seconds long,
and a 10 s window costs about a third of a 30 s one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Heads = Sequence[Tuple[int, int]]


def encode(encoder, mel: torch.Tensor) -> torch.Tensor:
    """`AudioEncoder.forward` for a mel window of up to 3000 frames (even), instead of exactly 3000."""
    x = F.gelu(encoder.conv1(mel))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = (x + encoder.positional_embedding[: x.shape[1]]).to(x.dtype)
    for block in encoder.blocks:
        x = block(x)
    return encoder.ln_post(x)


@dataclass
class KVCache:
    """Self-attention keys and values of the tokens decoded so far, per layer: (beams, heads, tokens, dim)."""

    keys: List[torch.Tensor]
    values: List[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def select(self, beams: torch.Tensor) -> "KVCache":
        """The cache of the hypotheses `beams` (indices into the current ones), for beam search."""
        return KVCache([k.index_select(0, beams) for k in self.keys], [v.index_select(0, beams) for v in self.values])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class ExplicitDecoder:
    """Forward passes of `model.decoder` that also return the alignment heads' attention."""

    def __init__(self, model, heads: Heads) -> None:
        self.decoder = model.decoder
        self.n_head = model.dims.n_text_head
        self.n_ctx = model.dims.n_text_ctx
        self.n_align = len(heads)
        by_layer: Dict[int, List[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).append(head)
        self.heads_by_layer = {layer: torch.tensor(sorted(h)) for layer, h in by_layer.items()}

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1, 3).flatten(start_dim=2)

    def cross_kv(self, audio_features: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of the encoded audio, once per step for every layer."""
        return [
            (self._split(block.cross_attn.key(audio_features)), self._split(block.cross_attn.value(audio_features)))
            for block in self.decoder.blocks
        ]

    def forward(
        self,
        tokens: torch.Tensor,
        cross: List[Tuple[torch.Tensor, torch.Tensor]],
        cache: Optional[KVCache] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, KVCache]:
        """(logits (B, T, vocab), alignment attention (B, T, audio frames), the extended cache)."""
        batch, n_new = tokens.shape
        offset = cache.length if cache is not None else 0
        if offset + n_new > self.n_ctx:
            raise ValueError(f"{offset + n_new} tokens exceed the decoder's context of {self.n_ctx}")
        x = self.decoder.token_embedding(tokens) + self.decoder.positional_embedding[offset : offset + n_new]
        causal = None
        if n_new > 1:
            causal = torch.ones(n_new, offset + n_new, dtype=torch.bool, device=tokens.device).tril(diagonal=offset)
        keys, values = [], []
        alignment: Optional[torch.Tensor] = None
        for i, block in enumerate(self.decoder.blocks):
            h = block.attn_ln(x)
            q, k, v = self._split(block.attn.query(h)), self._split(block.attn.key(h)), self._split(block.attn.value(h))
            if cache is not None:
                k, v = torch.cat([cache.keys[i], k], dim=2), torch.cat([cache.values[i], v], dim=2)
            keys.append(k)
            values.append(v)
            x = x + block.attn.out(self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=causal)))

            h = block.cross_attn_ln(x)
            q = self._split(block.cross_attn.query(h))
            ck, cv = (t.expand(batch, -1, -1, -1) for t in cross[i])
            if i in self.heads_by_layer:
                weights = torch.softmax((q @ ck.transpose(-1, -2)).float() * q.shape[-1] ** -0.5, dim=-1)
                attended = weights.to(cv.dtype) @ cv
                chosen = weights.index_select(1, self.heads_by_layer[i].to(weights.device)).sum(dim=1)
                alignment = chosen if alignment is None else alignment + chosen
            else:
                attended = F.scaled_dot_product_attention(q, ck, cv)
            x = x + block.cross_attn.out(self._merge(attended))
            x = x + block.mlp(block.mlp_ln(x))
        x = self.decoder.ln(x)
        logits = (x @ self.decoder.token_embedding.weight.to(x.dtype).T).float()
        assert alignment is not None
        return logits, alignment / self.n_align, KVCache(keys, values)
