"""Whisper's typical failure on short windows, recognised from text alone (shared by every backend)."""

from __future__ import annotations

import logging
import re
import zlib
from collections import Counter
from typing import Callable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

MAX_TOKENS_PER_S = 12.0
# A loop cut by `cut_tail_loop` must have heard the audio to about its end: its last word starts at most
# this long before it (0.04-0.72 s on the looped test clips). Four real copies of a sentence, looped on,
# cut to 4.6 s of 10.4: the speech after the cut is unheard, so that hypothesis is retried instead.
LOOP_CUT_MAX_GAP_S = 2.0


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


def cut_tail_loop(tokens: Sequence[int], forced: int, decode: Callable[[Sequence[int]], str],
                  duration_s: float) -> Optional[List[int]]:
    """`tokens` without the copies of a loop that runs to their end, or None where cutting does not help.

    The commonest loop on healthy speech: Whisper transcribes the buffer, reaches the end of its
    audio, and says the last sentence again ("... faced us. Four hours of steady work faced us.")
    or loops its last words to the token cap. On the looped test clips at 0.4-1 s steps, 22 of 121
    steps ended so; the retry on the full 30 s window cost 4-5 times a step (2.3-3 s on a 2 GHz
    core, the commit-lag outliers at N = 1) and mostly gave the first copy back. So the first copy
    is kept. Not cut, and retried as before: a loop from the first token (nothing heard before it,
    as in "Thank you. Thank you." on noise), a second copy inside the `forced` prefix, one word said
    over and over (speech, `_one_word`), a cut that still looks degenerate or holds one word four
    times in a row (on the phone call the cut kept tiny.en's 7 "Hello."s for 3 said, the retry
    fewer: WER 21.8 -> 29.9 %), and, once aligned, a cut that stops short of the audio's end
    (`heard_to_the_end`)."""
    cut = _tail_loop_cut(tokens)
    if cut is None or cut < forced:
        return None
    while cut < len(tokens) and _PUNCTUATION.fullmatch(decode(tokens[cut:cut + 1]).strip() or "x"):
        cut += 1  # the copies may be found shifted by a token: "well. | Four ... faced us" keeps its "."
    kept = list(tokens[:cut])
    kept_text = decode(kept)
    copy = decode(tokens[cut:]).lower().split()
    if not copy or _one_word(copy) or looks_degenerate(kept_text, len(kept), duration_s):
        return None
    if _one_word_run(kept_text.lower().split()):
        return None  # the phone call: tiny.en hears 7 "Hello."s for 3 when it loops; its retry heard fewer
    return kept


def screen_loops(tokens: List[int], forced: int, decode: Callable[[Sequence[int]], str],
                 duration_s: float) -> Tuple[List[int], str]:
    """One hypothesis' tokens before alignment, for every LocalAgreement backend: ("sound", tokens),
    ("cut", the first copy of a loop past the audio's end) or ("degenerate", tokens: retry it)."""
    text = decode(tokens)
    if not looks_degenerate(text, len(tokens), duration_s):
        return tokens, "sound"
    kept = cut_tail_loop(tokens, forced, decode, duration_s)
    if kept is None:
        return tokens, "degenerate"
    logger.debug("loop at the end of %.1f s of audio cut: %r", duration_s, text[-80:])
    return kept, "cut"


def undo_cuts_short_of_the_end(results, durations_s: Sequence[float], loops_cut: List[int]) -> List[int]:
    """Once aligned, the cut hypotheses that stop short of their audio's end (`heard_to_the_end`) are
    no longer counted as cut; returns their indices, to be retried as degenerate."""
    short = [i for i in loops_cut if not heard_to_the_end(results[i].words, durations_s[i])]
    for i in short:
        results[i].loop_cut = False
    return short


def _one_word_run(words: List[str], length: int = 4) -> bool:
    return any(_one_word(words[i:i + length]) for i in range(len(words) - length + 1))


def heard_to_the_end(words, duration_s: float) -> bool:
    """Whether a cut hypothesis' words (aligned) reach its audio's end: else what it cut may be speech."""
    return bool(words) and duration_s - words[-1].start <= LOOP_CUT_MAX_GAP_S


def _tail_loop_cut(tokens: Sequence[int]) -> Optional[int]:
    """End of the first copy of the earliest back-to-back repetition that lasts to the end of
    `tokens` (the last copy may be cut short by the token cap); None if the end does not repeat."""
    n, best = len(tokens), None
    for period in range(1, n // 2 + 1):
        start = n - period  # earliest index from which tokens[j] == tokens[j + period] to the end
        while start > 0 and tokens[start - 1] == tokens[start - 1 + period]:
            start -= 1
        if start > 0 and n - start >= 2 * period and (best is None or start + period < best):
            best = start + period
    return best
