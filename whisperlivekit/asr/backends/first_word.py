"""A hypothesis' first word, as the alignment hears it: with no text before it, its case is a coin toss.

Word probabilities come from the alignment pass, which runs without the prompt. At a buffer's start
(a stream's first words, and the first after each trim) nothing tells the model whether a sentence
begins there, so it splits the word's mass between the two spellings: Harvard's first 0.4-1.6 s give
" the" 0.42-0.51 and " The" 0.34-0.46 (tiny.en), about 0.85 together. The policies compare words
without case (`Word.key`), so a word's probability should not be low for that reason: the backends
add the other spelling's probability to the first token's. Later words have the sentence before them
and settle their case.

With no prompt either (a stream's or a segment's first words), generation is as blind, and an early
commit would keep the lower-case spelling ("the birch canoe ..."). Such a hypothesis starts a
transcript, so its first word takes the capitalised spelling of the two the model split it between.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence


def case_variant(encode: Callable[[str], List[int]], decode: Callable[[Sequence[int]], str], token: int) -> Optional[int]:
    """The one token spelling `token`'s text with its first letter's case swapped (" the" -> " The"), if any."""
    text = decode([token])
    letter = next((i for i, c in enumerate(text) if not c.isspace()), None)
    if letter is None or not text[letter].isalpha() or text[letter].swapcase() == text[letter]:
        return None
    swapped = text[:letter] + text[letter].swapcase() + text[letter + 1:]
    ids = encode(swapped)
    return ids[0] if len(ids) == 1 and ids[0] != token else None


def with_variant_mass(words: List[dict], variant_probability: float) -> List[dict]:
    """`words` (faster-whisper's dicts: probability = the mean of its `tokens`' probabilities) with the other
    spelling's probability added to the first token's."""
    first = dict(words[0])
    first["probability"] = min(1.0, float(first["probability"]) + variant_probability / len(first["tokens"]))
    return [first, *words[1:]]


def as_sentence_start(words: List[dict], token_text: str, variant_text: str) -> List[dict]:
    """`words` with the first one spelled with `variant_text` for its first token's `token_text`, where the
    variant is the capitalised spelling."""
    if not words or not variant_text.strip()[:1].isupper() or not str(words[0]["word"]).startswith(token_text):
        return words
    first = dict(words[0])
    first["word"] = variant_text + first["word"][len(token_text):]
    return [first, *words[1:]]
