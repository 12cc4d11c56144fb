"""Whisper's encoder and decoder in plain PyTorch, with the decoder's state owned by the caller.

The module names are openai-whisper's (`encoder.blocks.0.attn.query`, ...), so a
`.pt` checkpoint loads as is and `weights/torch_state.py` maps the other formats
onto them. What differs from openai-whisper is the decoder's calling convention,
built for many streams decoding in one batch:

- the self-attention key/value cache is a `DecoderState` the caller holds, with
  per-row positions and a mask of which cached tokens are real, so rows with
  prompts of different lengths decode together (prompts are left-padded) and
  finished rows can be dropped from the batch (`DecoderState.select`);
- the cross-attention weights of chosen heads come back from the call itself
  (word timing needs them), instead of through hooks on a shared model;
- attention is `scaled_dot_product_attention` everywhere else;
- the encoder takes a window shorter than 30 s (its positional embedding sliced):
  a streaming buffer is mostly a few seconds long.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of one Whisper model (openai-whisper's `ModelDimensions`, same field names)."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_dict(cls, values: Dict[str, int]) -> "WhisperDims":
        return cls(**{f.name: int(values[f.name]) for f in fields(cls)})


def _heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, n_state) → (B, heads, T, head_dim)."""
    return x.view(*x.shape[:2], n_head, -1).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    return x.transpose(1, 2).flatten(start_dim=2)


class Attention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)


class Block(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross: bool) -> None:
        super().__init__()
        self.attn = Attention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = Attention(n_state, n_head) if cross else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        n_state = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.zeros(dims.n_audio_ctx, n_state))
        self.blocks = nn.ModuleList(Block(n_state, dims.n_audio_head, cross=False) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(n_state)

    def forward(self, mel: Tensor) -> Tensor:
        """(B, n_mels, frames) with frames even and ≤ 3000 → (B, frames / 2, n_state)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            h = block.attn_ln(x)
            a = block.attn
            q, k, v = (_heads(p(h), a.n_head) for p in (a.query, a.key, a.value))
            x = x + a.out(_merge(F.scaled_dot_product_attention(q, k, v)))
            x = x + block.mlp(block.mlp_ln(x))
        return self.ln_post(x)


@dataclass
class DecoderState:
    """One batch's decoding state: what the caller keeps between decoder calls.

    `keys`/`values`: per layer, (B, heads, tokens, head_dim) self-attention cache;
    `cross`: per layer, the encoded audio's cross-attention keys and values;
    `valid`: (B, tokens) which cached tokens are real (False for left padding);
    `positions`: (B,) the position the next token of each row takes;
    `padded`: whether `valid` holds any padding, kept on the host so that a decode step
    never waits on the device to find out (see `TextDecoder.forward`);
    `frames`: (B, frames) which encoder frames each row's cross-attention reads, where rows of
    different windows share one state (None: every frame of every row).
    """

    keys: List[Tensor]
    values: List[Tensor]
    cross: List[Tuple[Tensor, Tensor]]
    valid: Tensor
    positions: Tensor
    padded: bool = False
    frames: Optional[Tensor] = None

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def select(self, rows: Tensor) -> "DecoderState":
        """The state of `rows` only (finished rows leave the batch; beams are picked and repeated).

        Cross keys/values of batch 1 are shared by every row (AlignAtt's beams all read one
        window) and stay as they are: copying them per row each step would cost more than the step.
        """
        valid = self.valid.index_select(0, rows)
        return DecoderState(
            [k.index_select(0, rows) for k in self.keys],
            [v.index_select(0, rows) for v in self.values],
            [(k, v) if k.shape[0] == 1 else (k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cross],
            valid,
            self.positions.index_select(0, rows),
            padded=self.padded and not bool(valid.all()),  # the padded rows may have left (rows leave rarely)
            frames=None if self.frames is None else self.frames.index_select(0, rows),
        )


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        n_state = dims.n_text_state
        self.n_head = dims.n_text_head
        self.token_embedding = nn.Embedding(dims.n_vocab, n_state)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, n_state))
        self.blocks = nn.ModuleList(Block(n_state, dims.n_text_head, cross=True) for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(n_state)

    def start(self, audio_features: Tensor, frames: Optional[Tensor] = None) -> DecoderState:
        """An empty state over `audio_features` (B, frames, n_state): cross keys/values computed once.

        `frames` (B, frames) bool marks each row's own encoder frames, where rows of shorter
        windows were padded to the longest (`TorchWhisperBackend._encode_windows`); their cross-attention never reads the padding.
        """
        cross = []
        for block in self.blocks:
            a = block.cross_attn
            cross.append((_heads(a.key(audio_features), a.n_head), _heads(a.value(audio_features), a.n_head)))
        batch, device = audio_features.shape[0], audio_features.device
        empty = [audio_features.new_zeros(batch, self.n_head, 0, cross[0][0].shape[-1]) for _ in self.blocks]
        return DecoderState(
            keys=empty, values=list(empty), cross=cross,
            valid=torch.zeros(batch, 0, dtype=torch.bool, device=device),
            positions=torch.zeros(batch, dtype=torch.long, device=device),
            frames=frames,
        )

    def forward(
        self,
        tokens: Tensor,
        state: DecoderState,
        valid: Optional[Tensor] = None,
        heads: Optional[Dict[int, Sequence[int]]] = None,
        logits_at: Optional[Tensor] = None,
    ) -> Tuple[Tensor, DecoderState, Optional[Tensor]]:
        """Decode `tokens` (B, T) after what `state` holds.

        `valid` (B, T) marks real tokens (False: left padding, which takes no
        position and is never attended to). `heads` {layer: [head, ...]} asks for
        those heads' cross-attention. `logits_at` (B, k) limits the logits to
        those columns of each row (a prompt needs only its last one). Returns (logits (B, T or k, vocab) in float32,
        the extended state, the chosen heads' attention (B, n_chosen, T, frames)
        in the order of `heads`, or None).
        """
        batch, n_new = tokens.shape
        device = tokens.device
        # A decode step (one token per row, no padding) reads nothing back from the device: on a GPU each
        # read waits for the queue to drain, and the worker's one thread launches every kernel of the step.
        step = valid is None and n_new == 1
        if valid is None:
            valid = torch.ones(batch, n_new, dtype=torch.bool, device=device)
            positions = state.positions[:, None] if step else state.positions[:, None] + torch.arange(n_new, device=device)[None]
            added = n_new
            padded = state.padded
        else:
            positions = (state.positions[:, None] + valid.long().cumsum(dim=1) - 1).clamp(min=0)
            added = valid.long().sum(dim=1)
            padded = state.padded or not bool(valid.all())
        # a position never exceeds the columns so far, so only near the context's end is it read back
        if state.length + n_new > self.positional_embedding.shape[0] and int(positions.max()) >= self.positional_embedding.shape[0]:
            raise ValueError(f"{int(positions.max()) + 1} tokens exceed the decoder's context")
        x = self.token_embedding(tokens) + self.positional_embedding[positions]

        all_valid = torch.cat([state.valid, valid], dim=1)
        mask = None
        if step and padded:
            mask = all_valid[:, None, None, :]  # one new real token sees every real token, itself included
        elif n_new > 1 or padded:
            total = all_valid.shape[1]
            causal = torch.ones(n_new, total, dtype=torch.bool, device=device).tril(diagonal=state.length)
            mask = causal[None] & all_valid[:, None, :]
            # a padding query sees no real key; let it see itself so its (unused) output is not NaN
            own = torch.zeros(n_new, total, dtype=torch.bool, device=device)
            own[torch.arange(n_new), state.length + torch.arange(n_new)] = True
            mask = (mask | own[None])[:, None]

        cross_mask = None if state.frames is None else state.frames[:, None, None, :]
        keys, values, chosen = [], [], []
        for i, block in enumerate(self.blocks):
            a = block.attn
            h = block.attn_ln(x)
            q, k, v = (_heads(p(h), a.n_head) for p in (a.query, a.key, a.value))
            k = torch.cat([state.keys[i], k], dim=2)
            v = torch.cat([state.values[i], v], dim=2)
            keys.append(k)
            values.append(v)
            x = x + a.out(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))

            c = block.cross_attn
            q = _heads(c.query(block.cross_attn_ln(x)), c.n_head)
            ck, cv = state.cross[i]
            if ck.shape[0] != batch:  # one window shared by all rows (see `DecoderState.select`)
                ck, cv = ck.expand(batch, -1, -1, -1), cv.expand(batch, -1, -1, -1)
            if heads and i in heads:
                scores = (q @ ck.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
                if cross_mask is not None:
                    scores = scores.masked_fill(~cross_mask, float("-inf"))
                weights = torch.softmax(scores, dim=-1)
                attended = weights.to(cv.dtype) @ cv
                chosen.append(weights[:, list(heads[i])])
            else:
                attended = F.scaled_dot_product_attention(q, ck, cv, attn_mask=cross_mask)
            x = x + c.out(_merge(attended))
            x = x + block.mlp(block.mlp_ln(x))
        if logits_at is not None:
            x = x.gather(1, logits_at[:, :, None].expand(-1, -1, x.shape[-1]))
        x = self.ln(x)
        logits = (x @ self.token_embedding.weight.to(x.dtype).T).float()
        new_state = DecoderState(keys, values, state.cross, all_valid, state.positions + added, padded)
        return logits, new_state, (torch.cat(chosen, dim=1) if chosen else None)


class Whisper(nn.Module):
    """The whole model; `load_state_dict` takes openai-whisper's names."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865


def default_alignment_heads(dims: WhisperDims) -> List[Tuple[int, int]]:
    """Every head of the upper half of the decoder: what openai-whisper uses when a model names none."""
    return [(layer, head) for layer in range(dims.n_text_layer // 2, dims.n_text_layer) for head in range(dims.n_text_head)]
