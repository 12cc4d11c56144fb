"""Whisper's tokens over the model's own `tokenizer.json` (Hugging Face `tokenizers`), nothing else.

Special tokens are looked up by name, so one class serves English-only and
multilingual vocabularies; the languages are the tokens between
`<|startoftranscript|>` and `<|translate|>`, read from the vocabulary itself.
`suppressed` is Whisper's default `suppress_tokens=[-1]` set (symbols that are
not speech, and the task tokens), and `split_to_word_tokens` groups tokens into
words as Whisper's word timing does: at a space or a punctuation mark, or, in
languages written without spaces, at every complete character.
"""

from __future__ import annotations

import string
from functools import cached_property
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

# Symbols Whisper never emits as speech: each is suppressed when it is one token (alone or after a space);
# the musical signs always, by their first token.
NON_SPEECH_SYMBOLS = tuple('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + (
    "<<", ">>", "<<<", ">>>", "--", "---", "-(", "-[", "('", '("', "((", "))", "(((", ")))", "[[", "]]", "{{", "}}",
    "♪♪", "♪♪♪",
)
MUSIC_SIGNS = tuple("♩♪♫♬♭♮♯")
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


class WhisperTokenizer:
    """Token ids and text for one model; `language`/`task` shape the start sequence of multilingual models."""

    def __init__(self, hf_tokenizer, multilingual: bool, language: Optional[str] = None, task: str = "transcribe") -> None:
        self.hf = hf_tokenizer
        self.multilingual = multilingual  # the model's vocabulary size says it (English-only ones have language tokens too)
        if self.multilingual and language is not None and language not in self.languages:
            raise ValueError(f"unknown language {language!r}; this model knows {', '.join(self.languages)}")
        self.language = (language or "en") if self.multilingual else "en"
        self.task = task

    @classmethod
    def from_file(cls, path: Path, multilingual: bool, language: Optional[str] = None,
                  task: str = "transcribe") -> "WhisperTokenizer":
        import tokenizers

        return cls(tokenizers.Tokenizer.from_file(str(path)), multilingual, language, task)

    def with_language(self, language: Optional[str], task: str) -> "WhisperTokenizer":
        return WhisperTokenizer(self.hf, self.multilingual, language, task)

    def id(self, token: str) -> int:
        value = self.hf.token_to_id(token)
        if value is None:
            raise KeyError(f"the vocabulary has no {token}")
        return value

    # -- special tokens ------------------------------------------------------------------
    @cached_property
    def eot(self) -> int:
        return self.id("<|endoftext|>")

    @cached_property
    def sot(self) -> int:
        return self.id("<|startoftranscript|>")

    @cached_property
    def sot_prev(self) -> int:
        return self.id("<|startofprev|>")

    @cached_property
    def sot_lm(self) -> int:
        return self.id("<|startoflm|>")

    @cached_property
    def transcribe(self) -> int:
        return self.id("<|transcribe|>")

    @cached_property
    def translate(self) -> int:
        return self.id("<|translate|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self.id("<|notimestamps|>")

    @cached_property
    def no_speech(self) -> int:
        found = self.hf.token_to_id("<|nospeech|>")
        return found if found is not None else self.id("<|nocaptions|>")

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    @cached_property
    def languages(self) -> Tuple[str, ...]:
        """Language codes in vocabulary order (what language detection chooses among)."""
        if not self.multilingual:
            return ("en",)
        return tuple(self.hf.id_to_token(i)[2:-2] for i in range(self.sot + 1, self.translate))

    def language_token(self, code: str) -> int:
        return self.id(f"<|{code}|>")

    @property
    def sot_sequence(self) -> List[int]:
        if not self.multilingual:
            return [self.sot]
        return [self.sot, self.language_token(self.language), self.transcribe if self.task == "transcribe" else self.translate]

    @cached_property
    def suppressed(self) -> Tuple[int, ...]:
        """Whisper's default suppressed tokens: non-speech symbols, task and start tokens, no-speech."""
        ids = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in NON_SPEECH_SYMBOLS + MUSIC_SIGNS:
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in MUSIC_SIGNS:
                    ids.add(tokens[0])
        ids |= {self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_speech}
        return tuple(sorted(ids))

    # -- text ----------------------------------------------------------------------------
    @cached_property
    def text_pieces(self) -> List[str]:
        """Every text token (below end-of-text) decoded alone, a byte that is only part of a character as U+FFFD:
        where AlignAtt reads which tokens begin a word (a leading space) and their letters."""
        return self.hf.decode_batch([[t] for t in range(self.eot)], skip_special_tokens=False)

    def encode(self, text: str) -> List[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: Sequence[int]) -> str:
        return self.hf.decode([t for t in tokens if t < self.eot])

    def split_to_word_tokens(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        """(words, their tokens): each word keeps its leading space; special tokens stand alone."""
        pieces, piece_tokens = self._split_on_characters(tokens)
        if self.language in UNSPACED_LANGUAGES:
            return pieces, piece_tokens
        words: List[str] = []
        word_tokens: List[List[int]] = []
        for piece, ids in zip(pieces, piece_tokens):
            starts_word = ids[0] >= self.eot or piece.startswith(" ") or piece.strip() in string.punctuation
            if starts_word or not words:
                words.append(piece)
                word_tokens.append(list(ids))
            else:
                words[-1] += piece
                word_tokens[-1].extend(ids)
        return words, word_tokens

    def _split_on_characters(self, tokens: List[int]) -> Tuple[List[str], List[List[int]]]:
        """Cut where the tokens so far decode to whole characters (a character may span several byte tokens)."""
        full = self._decode_all(tokens)
        pieces: List[str] = []
        piece_tokens: List[List[int]] = []
        current: List[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            text = self._decode_all(current)
            broken = text.find("\ufffd")
            if broken < 0 or (offset + broken < len(full) and full[offset + broken] == "\ufffd"):
                pieces.append(text)
                piece_tokens.append(current)
                offset += len(text)
                current = []
        return pieces, piece_tokens

    def _decode_all(self, tokens: List[int]) -> str:
        """Text tokens decoded, timestamps written as `<|1.23|>`, other special tokens dropped."""
        out: List[str] = []
        run: List[int] = []
        for token in tokens:
            if token >= self.timestamp_begin:
                out.append(self.hf.decode(run))
                out.append(f"<|{(token - self.timestamp_begin) * 0.02:.2f}|>")
                run = []
            else:
                run.append(token)
        out.append(self.hf.decode(run))
        return "".join(out)
