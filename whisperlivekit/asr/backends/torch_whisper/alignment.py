"""Word times from cross-attention: Whisper's alignment-head DTW, written out.

The decoder is run once more over start-of-transcript, `<|notimestamps|>`, the
text tokens and end-of-text, asking for the alignment heads' attention. Per
row (so batching cannot change a result), as CTranslate2's `align` and
openai-whisper's `find_alignment` do: keep the frames that hold audio, softmax
over them, standardise each frame's column over the tokens, median-filter along
time (width 7), average the heads, and find the cheapest monotonic path through
the negated matrix (dynamic time warping). A word starts at the frame where the
path first reaches its first token, and ends where the next word starts.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from whisperlivekit.asr.backends.torch_whisper.model import DecoderState, TextDecoder

MEDIAN_FILTER_WIDTH = 7
FRAMES_PER_S = 50  # encoder positions per second of audio (10 ms mel hop, stride 2)


def dtw(cost: np.ndarray) -> tuple:
    """(token indices, frame indices) of the cheapest monotonic path through `cost` (tokens, frames).

    Filled one token row at a time, so numpy does the loop over frames: a row is
    `total[j] = cost[j] + min(above[j], total[j - 1])`, where `above` is the better of the
    diagonal and upward steps from the row before. Unrolled, that is a running minimum
    of `above[k] - cumsum(cost)[k - 1]`, plus `cumsum(cost)[j]`. The first version filled
    anti-diagonals, one numpy round per token + frame (about 550 for 10 s of audio); DTW
    then held 14-22 % of the GPU server's samples (docs/gpu-check.md). Rows are the
    tokens, a few dozen. The path is the cell-by-cell fill's (tests/test_torch_backend.py);
    ties prefer the step along time.
    """
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)
    for i in range(1, n + 1):
        diagonal, up = total[i - 1, :-1], total[i - 1, 1:]
        above = np.minimum(diagonal, up)
        row_sum = np.cumsum(cost[i - 1])
        before = np.concatenate(([0.0], row_sum[:-1]))
        best = np.minimum.accumulate(above - before)
        total[i, 1:] = row_sum + best
        # left wherever the running minimum came from an earlier frame (ties too)
        from_left = np.concatenate(([False], above[1:] - before[1:] >= best[:-1]))
        trace[i, 1:] = np.where(from_left, 2, np.where(diagonal < up, 0, 1))
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    path.reverse()
    return np.array([p[0] for p in path]), np.array([p[1] for p in path])


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    shape = x.shape
    padded = F.pad(x.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect").reshape(*shape[:-1], -1)
    return padded.unfold(-1, width, 1).median(dim=-1).values


@torch.inference_mode()
def align(
    decoder: TextDecoder,
    audio_features: torch.Tensor,
    sot_sequences: Sequence[Sequence[int]],
    text_tokens: Sequence[Sequence[int]],
    num_frames: Sequence[int],
    heads: Dict[int, Sequence[int]],
    no_timestamps: int,
    eot: int,
    frames: Optional[torch.Tensor] = None,
    first_variants: Optional[Sequence[Optional[int]]] = None,
) -> List[tuple]:
    """Per row: (DTW token indices, DTW frame indices, per-text-token probabilities); rows without text get None.

    `num_frames` counts mel frames (10 ms) of real audio per row; all rows share
    one sot-sequence length; `frames` as in `greedy_decode` (windows of several lengths in one batch).
    A row's `first_variants` entry is its first token's other spelling (first_word.py), whose
    probability is added to the first token's.
    """
    rows = [r for r, tokens in enumerate(text_tokens) if tokens]
    out: List[tuple] = [None] * len(text_tokens)  # type: ignore[list-item]
    if not rows:
        return out
    sequences = [[*sot_sequences[r], no_timestamps, *text_tokens[r], eot] for r in rows]
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(rows), width), eot, dtype=torch.long)
    for i, sequence in enumerate(sequences):
        tokens[i, : len(sequence)] = torch.tensor(sequence)  # right padding: causal attention never reads it
    device = audio_features.device
    offset = len(sot_sequences[rows[0]])
    # logits only where a text token is predicted (the vocabulary projection is most of this pass's cost)
    longest = max(len(text_tokens[r]) for r in rows)
    columns = torch.tensor([[offset + min(t, len(text_tokens[r]) - 1) for t in range(longest)] for r in rows], device=device)
    kept = torch.tensor(rows, device=device)
    state: DecoderState = decoder.start(audio_features.index_select(0, kept),
                                        None if frames is None else frames.index_select(0, kept))
    logits, _, attention = decoder(tokens.to(device), state, heads=heads, logits_at=columns)
    text_probs = torch.softmax(logits[..., :eot], dim=-1)
    for i, row in enumerate(rows):
        length = len(sequences[i])
        frames = max(1, num_frames[row] // 2)
        weights = attention[i, :, :length, :frames].float()  # (heads, tokens, frames)
        weights = weights / weights.sum(dim=-1, keepdim=True)  # softmax over the audio frames only
        std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
        weights = (weights - mean) / std
        matrix = _median_filter(weights, MEDIAN_FILTER_WIDTH).mean(dim=0)[offset:-1]
        token_index, frame_index = dtw(-matrix.double().cpu().numpy())
        targets = torch.tensor(text_tokens[row], device=logits.device)
        probs = text_probs[i, : len(text_tokens[row])].gather(1, targets[:, None])[:, 0]
        variant = first_variants[row] if first_variants is not None else None
        if variant is not None:
            probs[0] = (probs[0] + text_probs[i, 0, variant]).clamp(max=1.0)
        out[row] = (token_index, frame_index, probs.float().cpu().numpy())
    return out


def word_times(tokenizer, text_tokens: List[int], token_index: np.ndarray, frame_index: np.ndarray,
               probs: np.ndarray) -> List[dict]:
    """[{word, start, end, probability}] from one row's DTW path (as faster-whisper groups it)."""
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(token_index), (1, 0), constant_values=1).astype(bool)
    jump_times = frame_index[jumps] / FRAMES_PER_S
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    return [
        {"word": word, "start": float(start), "end": float(end), "probability": float(np.mean(probs[i:j]))}
        for word, start, end, i, j in zip(words, starts, ends, boundaries[:-1], boundaries[1:])
    ]
