"""Whisper's typical failure on short windows, recognised from text alone (shared by every backend)."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import List

MAX_TOKENS_PER_S = 12.0


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


REPEAT_MIN_WORDS = 5
_PUNCTUATION = re.compile(r"[^\w' ]+")


def repeats_back_to_back(words: List[str], min_words: int = REPEAT_MIN_WORDS) -> bool:
    """True if some run of at least `min_words` words is said twice in a row.

    Whisper's short loops ("So I don't hear that New Jersey now. I don't hear that New Jersey
    now.") stop after one copy, below the other checks; people rarely repeat five words or more
    verbatim at once (a phrase said twice apart in a dialogue is not counted)."""
    for n in range(min_words, len(words) // 2 + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i:i + n] == words[i + n:i + 2 * n] and not _one_word(words[i:i + n]):
                return True
    return False


def _one_word(phrase) -> bool:
    """One word said over and over ("Hello? Hello? Hello. Hello. Hello. Hello." on the phone call)
    is speech, not a phrase looped: a loop of one word runs on and is caught by the token count
    or the compression ratio (8 "Hello."s alone compress 3.1x)."""
    return len({_PUNCTUATION.sub("", word) for word in phrase}) == 1


def looks_degenerate(text: str, n_tokens: int, duration_s: float) -> bool:
    """A phrase repeated, or more tokens than speech allows: Whisper looping instead of transcribing."""
    words = text.lower().split()
    four_grams = Counter(gram for gram in (tuple(words[i : i + 4]) for i in range(len(words) - 3))
                         if not _one_word(gram))
    return (
        n_tokens > duration_s * MAX_TOKENS_PER_S + 8  # loops run until the token cap
        or compression_ratio(text) > 2.4
        or max(four_grams.values(), default=0) >= 3  # twice is natural in dialogue; three times is a loop
        or repeats_back_to_back(_PUNCTUATION.sub("", text.lower()).split())
    )
