"""Batched greedy decoding with Whisper's timestamp rules: many streams, one decoder call per token.

Each row has its own prompt (committed text, then the start-of-transcript
sequence) and may have a prefix it is forced to begin with; prompts are
left-padded to one length, so every row's next token is in the last column. A row leaves the batch when it emits end-of-text, so the
batch shrinks as rows finish instead of decoding padding.

The rules are those of CTranslate2's Whisper `generate` (what faster-whisper
runs), so both backends choose the same tokens: `suppress` always, `begin_suppress`
(blank, end-of-text) at the first step, no `<|notimestamps|>`, the first token a
timestamp no later than `max_initial_timestamp_index`, timestamps in pairs except
before end-of-text, never decreasing, and a timestamp forced whenever the
timestamps together are likelier than any single other token. The score is the
sum of the chosen tokens' log-probabilities (end-of-text included) under those rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from whisperlivekit.asr.backends.torch_whisper.model import TextDecoder

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SpecialTokens:
    eot: int
    no_timestamps: int
    timestamp_begin: int
    no_speech: int
    suppress: Sequence[int]
    begin_suppress: Sequence[int]
    max_initial_timestamp_index: int = 50


@dataclass
class Generation:
    tokens: List[int]  # generated tokens, timestamps included, end-of-text not
    sum_logprob: float
    no_speech_prob: float


def _left_pad(prompts: Sequence[Sequence[int]], pad: int, device) -> tuple:
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = torch.tensor(list(prompt))
        valid[row, width - len(prompt):] = True
    return tokens.to(device), valid.to(device)


@dataclass
class _RowHistory:
    """What the timestamp rules need to know of each row's generated tokens, as tensors (no per-row Python)."""

    count: torch.Tensor  # tokens generated so far
    last: torch.Tensor  # the last one (-1: none)
    penultimate: torch.Tensor  # the one before (-1: none)
    last_timestamp: torch.Tensor  # the latest timestamp token (-1: none)

    @classmethod
    def empty(cls, rows: int, device) -> "_RowHistory":
        none = torch.full((rows,), -1, dtype=torch.long, device=device)
        return cls(torch.zeros(rows, dtype=torch.long, device=device), none, none.clone(), none.clone())

    def push(self, tokens: torch.Tensor, timestamp_begin: int) -> "_RowHistory":
        stamped = torch.where(tokens >= timestamp_begin, tokens, self.last_timestamp)
        return _RowHistory(self.count + 1, tokens, self.last, stamped)

    def select(self, rows: torch.Tensor) -> "_RowHistory":
        return _RowHistory(*(t.index_select(0, rows) for t in (self.count, self.last, self.penultimate, self.last_timestamp)))


def _apply_rules(logits: torch.Tensor, history: _RowHistory, special: SpecialTokens, suppress: torch.Tensor,
                 time_offsets: torch.Tensor, first: bool, timestamps: bool = True) -> None:
    """Mask `logits` (rows, vocab) in place with the suppression and timestamp rules.

    `suppress` is 0 or -inf per vocabulary entry: the tokens suppressed at every
    step, added as one bias. Without `timestamps` (a prompt ending in
    `<|notimestamps|>`) only those and the first step's blank and end-of-text are
    suppressed. Every row starts at the same step, so the first step is the same for
    all. Each rule touches only the columns it concerns, and the rules run on the
    logits, not log-probabilities (the timestamp-forcing comparison is the same on both,
    each side shifted by the row's log-partition): on a GPU every small op costs a kernel
    launch on the one CPU thread that feeds it, and these rules ran on every step of
    every batch (5-12 % of the H200 server's samples, docs/gpu-check.md).
    """
    tb, eot = special.timestamp_begin, special.eot
    logits.add_(suppress)
    if first:
        logits[:, list(special.begin_suppress)] = NEG_INF
    if not timestamps:
        return
    if first:
        logits[:, :tb] = NEG_INF  # the first token is a timestamp...
        logits[:, tb + special.max_initial_timestamp_index + 1:] = NEG_INF  # ...and an early one
        return
    last_is_time = history.last >= tb
    # with one token generated, the "penultimate" is that token itself (a lone first timestamp pairs with itself)
    before = torch.where(history.count >= 2, history.penultimate, history.last)
    pair_done = last_is_time & (before >= tb)
    times = logits[:, tb:]
    times.masked_fill_(pair_done[:, None], NEG_INF)  # a pair is complete: text (or end) next
    logits[:, :eot].masked_fill_((last_is_time & ~pair_done)[:, None], NEG_INF)  # a lone one: another or end
    times.masked_fill_(time_offsets < (history.last_timestamp - tb)[:, None], NEG_INF)  # timestamps never decrease
    # where the timestamps together are likelier than any other single token, a timestamp it is
    force = ~pair_done & (torch.logsumexp(times, dim=-1) > logits[:, :tb].max(dim=-1).values)
    logits[:, :tb].masked_fill_(force[:, None], NEG_INF)


@torch.inference_mode()
def greedy_decode(
    decoder: TextDecoder,
    audio_features: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    sot_offset: int,
    max_steps: int,
    special: SpecialTokens,
    prefixes: Optional[Sequence[Sequence[int]]] = None,
    timestamps: bool = True,
    frames: Optional[torch.Tensor] = None,
) -> List[Generation]:
    """Decode every row of `audio_features` (B, frames, state) after its prompt, greedily.

    `sot_offset` is where start-of-transcript sits counted from each prompt's end
    (1 for English-only models, 3 with language and task); the no-speech
    probability is read there. A row's `prefixes` entry is text it is forced to
    begin with (decoded in the prompt's pass, not returned; the rules start after
    it). At most `max_steps` tokens per row, end-of-text included. `frames` marks each row's own
    encoder frames where windows of several lengths were padded into one batch (`TorchWhisperBackend._encode_windows`).
    """
    batch = len(prompts)
    prefixes = prefixes or [[] for _ in range(batch)]
    tokens, valid = _left_pad([[*p, *f] for p, f in zip(prompts, prefixes)], special.eot, audio_features.device)
    width, device = tokens.shape[1], audio_features.device
    columns = torch.tensor([[width - len(f) - sot_offset, width - 1] for f in prefixes], device=device)
    state = decoder.start(audio_features, frames)
    logits, state, _ = decoder(tokens, state, valid=valid, logits_at=columns)
    no_speech = torch.softmax(logits[:, 0], dim=-1)[:, special.no_speech].tolist()
    logits = logits[:, 1]

    suppress = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=device)
    suppress[[*special.suppress, *([special.no_timestamps] if timestamps else [])]] = NEG_INF
    time_offsets = torch.arange(logits.shape[-1] - special.timestamp_begin, device=device)[None]
    history = _RowHistory.empty(batch, device)
    generated: List[List[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    alive = list(range(batch))  # original row of each row still in the batch
    for step in range(max_steps):
        _apply_rules(logits, history, special, suppress, time_offsets, first=step == 0, timestamps=timestamps)
        best = logits.argmax(dim=-1)
        best_logprob = logits.gather(1, best[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
        history = history.push(best, special.timestamp_begin)
        keep = []
        # one copy to the host per step (the token ids are exact in float64)
        chosen, chosen_logprob = torch.stack((best.double(), best_logprob.double())).tolist()
        for i, (token, logprob) in enumerate(zip(map(int, chosen), chosen_logprob)):
            row = alive[i]
            scores[row] += logprob
            if token == special.eot:
                continue
            generated[row].append(token)
            keep.append(i)
        if not keep or step == max_steps - 1:
            break
        if len(keep) != len(alive):
            index = torch.tensor(keep, device=best.device)
            state, best, history = state.select(index), best.index_select(0, index), history.select(index)
            alive = [alive[i] for i in keep]
        logits, state, _ = decoder(best[:, None], state)
        logits = logits[:, -1]
    return [Generation(generated[r], scores[r], no_speech[r]) for r in range(batch)]
