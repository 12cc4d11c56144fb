"""The decoder calls of one AlignAtt step: logits and, with them, where the alignment heads look.

AlignAtt needs, for every token it emits, where the alignment heads look in the
audio. Our PyTorch Whisper's decoder (`torch_whisper/model.py`) returns the
cross-attention of chosen heads from the call itself and keeps its key/value
cache in a `DecoderState` the caller owns, so two streams decoding at once on a
device's lanes never see each other's attention and nothing is stored on the
shared model. This module only asks for the heads and averages them.

A step decodes one window: the state's cross keys/values have batch 1 and are
shared by the step's beams (`DecoderState.select` keeps them as they are).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from whisperlivekit.asr.backends.torch_whisper.model import DecoderState, TextDecoder

Heads = Sequence[Tuple[int, int]]


class AlignAttDecoder:
    """`TextDecoder` calls that return (logits, the alignment heads' mean attention, the extended state)."""

    def __init__(self, decoder: TextDecoder, heads: Heads) -> None:
        self.decoder = decoder
        self.n_ctx = int(decoder.positional_embedding.shape[0])
        by_layer: Dict[int, List[int]] = {}
        for layer, head in sorted(heads):
            by_layer.setdefault(layer, []).append(head)
        self.heads_by_layer = by_layer

    def start(self, audio_features: torch.Tensor) -> DecoderState:
        """An empty state over one encoded window (1, frames, n_state): its cross keys/values, once per step."""
        return self.decoder.start(audio_features)

    def forward(self, tokens: torch.Tensor, state: DecoderState) -> Tuple[torch.Tensor, torch.Tensor, DecoderState]:
        """(logits (B, T, vocab) float32, alignment attention (B, T, audio frames), the extended state)."""
        logits, state, chosen = self.decoder(tokens, state, heads=self.heads_by_layer)
        assert chosen is not None
        return logits, chosen.mean(dim=1), state
