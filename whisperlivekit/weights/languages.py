"""Which languages a Whisper model accepts, known before any connection loads it.

English-only checkpoints (`tiny.en`, ...) have a 51,864-token vocabulary, multilingual
ones 51,865 or more (CTranslate2's own `is_multilingual` rule); a CTranslate2 model
folder lists its vocabulary, so the answer costs one file read, not a model load.
"""

from __future__ import annotations

from pathlib import Path
from typing import FrozenSet, Optional

from faster_whisper.tokenizer import _LANGUAGE_CODES  # Whisper's language tokens, in its own order

WHISPER_LANGUAGES: FrozenSet[str] = frozenset(_LANGUAGE_CODES)
ENGLISH_ONLY: FrozenSet[str] = frozenset({"en"})
_MULTILINGUAL_VOCABULARY = 51_865


def _vocabulary_size(folder: Path) -> Optional[int]:
    text_file, json_file = folder / "vocabulary.txt", folder / "vocabulary.json"
    if text_file.is_file():
        with text_file.open("rb") as handle:
            return sum(1 for _ in handle)
    if json_file.is_file():
        import json

        return len(json.loads(json_file.read_text()))
    return None


def is_multilingual(model_path: Path, model_name: str = "") -> bool:
    """From the model's vocabulary where it is on disk, else from the name (`*.en` is English-only)."""
    size = _vocabulary_size(model_path) if model_path.is_dir() else None
    if size is not None:
        return size >= _MULTILINGUAL_VOCABULARY
    name = model_path.name if model_path.suffix != ".pt" else model_path.stem
    return not (name.endswith(".en") or model_name.endswith(".en"))


def model_languages(model_path: Path, model_name: str = "") -> FrozenSet[str]:
    return WHISPER_LANGUAGES if is_multilingual(model_path, model_name) else ENGLISH_ONLY
