"""Whisper's typical failure on short windows, recognised from text alone (shared by every backend)."""

from __future__ import annotations

import zlib
from collections import Counter

MAX_TOKENS_PER_S = 12.0


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


def looks_degenerate(text: str, n_tokens: int, duration_s: float) -> bool:
    """A phrase repeated, or more tokens than speech allows: Whisper looping instead of transcribing."""
    words = text.lower().split()
    four_grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    return (
        n_tokens > duration_s * MAX_TOKENS_PER_S + 8  # loops run until the token cap
        or compression_ratio(text) > 2.4
        or max(four_grams.values(), default=0) >= 3  # twice is natural in dialogue; three times is a loop
    )
