"""Which languages a Whisper model accepts, known before any connection loads it.

English-only checkpoints (`tiny.en`, ...) have a 51,864-token vocabulary, multilingual
ones 51,865 (99 languages) or 51,866 (large-v3: Cantonese, `yue`, added), CTranslate2's
own rule; a CTranslate2 model folder lists its vocabulary, so the answer costs one file
read, not a model load.
"""

from __future__ import annotations

from pathlib import Path
from typing import FrozenSet, Optional

try:
    from faster_whisper.tokenizer import _LANGUAGE_CODES  # Whisper's language tokens, in its own order
except ImportError:  # hosts with only the PyTorch backend (the GPU check's bundle): openai-whisper's, the same set
    from whisper.tokenizer import LANGUAGES

    _LANGUAGE_CODES = tuple(LANGUAGES)

WHISPER_LANGUAGES: FrozenSet[str] = frozenset(_LANGUAGE_CODES)
ENGLISH_ONLY: FrozenSet[str] = frozenset({"en"})
_MULTILINGUAL_VOCABULARY = 51_865
_CANTONESE_VOCABULARY = 51_866  # the 100th language token


def _vocabulary_size(folder: Path) -> Optional[int]:
    text_file, json_file = folder / "vocabulary.txt", folder / "vocabulary.json"
    if text_file.is_file():
        with text_file.open("rb") as handle:
            return sum(1 for _ in handle)
    if json_file.is_file():
        import json

        return len(json.loads(json_file.read_text()))
    config = folder / "config.json"  # a Hugging Face Transformers folder states it
    if config.is_file():
        import json

        size = json.loads(config.read_text()).get("vocab_size")
        return int(size) if isinstance(size, int) else None
    return None


def is_multilingual(model_path: Path, model_name: str = "") -> bool:
    """From the model's vocabulary where it is on disk, else from the name (`*.en` is English-only)."""
    size = _vocabulary_size(model_path) if model_path.is_dir() else None
    if size is not None:
        return size >= _MULTILINGUAL_VOCABULARY
    name = model_path.name if model_path.suffix != ".pt" else model_path.stem
    return not (name.endswith(".en") or model_name.endswith(".en"))


def model_languages(model_path: Path, model_name: str = "") -> FrozenSet[str]:
    """The codes the model has language tokens for (all of Whisper's when its vocabulary is unknown)."""
    if not is_multilingual(model_path, model_name):
        return ENGLISH_ONLY
    size = _vocabulary_size(model_path) if model_path.is_dir() else None
    return WHISPER_LANGUAGES - {"yue"} if size is not None and size < _CANTONESE_VOCABULARY else WHISPER_LANGUAGES
