"""Batched greedy decoding with Whisper's timestamp rules: many streams, one decoder call per token.

Each row has its own prompt (committed text, then the start-of-transcript
sequence); prompts are left-padded to one length, so every row's next token is
in the last column. A row leaves the batch when it emits end-of-text, so the
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
from typing import List, Sequence

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


def _apply_rules(logits: torch.Tensor, generated: List[List[int]], special: SpecialTokens, always: torch.Tensor) -> None:
    """Mask `logits` (rows, vocab) in place with the suppression and timestamp rules (`always`: a vocab mask)."""
    tb = special.timestamp_begin
    logits.masked_fill_(always, NEG_INF)
    check = []
    for row, tokens in enumerate(generated):
        if not tokens:
            logits[row, list(special.begin_suppress)] = NEG_INF
            logits[row, :tb] = NEG_INF
            logits[row, tb + special.max_initial_timestamp_index + 1:] = NEG_INF
            continue
        if tokens[-1] >= tb:
            penultimate = tokens[-2] if len(tokens) > 1 else tokens[-1]
            if penultimate >= tb:
                logits[row, tb:] = NEG_INF  # a pair is complete: text (or end) next
            else:
                logits[row, : special.eot] = NEG_INF  # a lone timestamp: another one or end-of-text
                check.append(row)
        else:
            check.append(row)
        last_timestamp = next((t for t in reversed(tokens) if t >= tb), None)
        if last_timestamp is not None:
            logits[row, tb:last_timestamp] = NEG_INF
    if check:
        rows = torch.tensor(check, device=logits.device)
        logprobs = torch.log_softmax(logits.index_select(0, rows), dim=-1)
        timestamps = torch.logsumexp(logprobs[:, tb:], dim=-1)
        best_other = logprobs[:, :tb].max(dim=-1).values
        for row in rows[timestamps > best_other].tolist():
            logits[row, :tb] = NEG_INF


@torch.inference_mode()
def greedy_decode(
    decoder: TextDecoder,
    audio_features: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    sot_offset: int,
    max_steps: int,
    special: SpecialTokens,
) -> List[Generation]:
    """Decode every row of `audio_features` (B, frames, state) after its prompt, greedily.

    `sot_offset` is where start-of-transcript sits counted from each prompt's end
    (1 for English-only models, 3 with language and task); the no-speech
    probability is read there. At most `max_steps` tokens per row, end-of-text included.
    """
    batch = len(prompts)
    tokens, valid = _left_pad(prompts, special.eot, audio_features.device)
    width = tokens.shape[1]
    state = decoder.start(audio_features)
    logits, state, _ = decoder(tokens, state, valid=valid, logits_at=[width - sot_offset, width - 1])
    no_speech = torch.softmax(logits[:, 0], dim=-1)[:, special.no_speech].tolist()
    logits = logits[:, 1]

    always = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    always[[*special.suppress, special.no_timestamps]] = True
    generated: List[List[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    alive = list(range(batch))  # original row of each row still in the batch
    for step in range(max_steps):
        _apply_rules(logits, [generated[r] for r in alive], special, always)
        logprobs = torch.log_softmax(logits, dim=-1)
        best = logprobs.argmax(dim=-1)
        best_logprob = logprobs.gather(1, best[:, None])[:, 0]
        keep = []
        for i, (token, logprob) in enumerate(zip(best.tolist(), best_logprob.tolist())):
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
            state, best = state.select(index), best.index_select(0, index)
            alive = [alive[i] for i in keep]
        logits, state, _ = decoder(best[:, None], state)
        logits = logits[:, -1]
    return [Generation(generated[r], scores[r], no_speech[r]) for r in range(batch)]
