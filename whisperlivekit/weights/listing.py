"""`whisperlivekit-server --list-models`: every Whisper model this machine has, and where it was found.

Nothing is downloaded or loaded: installed packages are found without importing
them, the Hugging Face cache and openai-whisper's cache are only listed. Each
line gives the name to pass to `--model`, the weights' format (which says which
backends read it) and the place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from whisperlivekit.config import cache_root, user_cache_home
from whisperlivekit.weights import hub
from whisperlivekit.weights import resolve

ALL_BACKENDS = "every backend"
TORCH_ONLY = "--backend torch / simulstreaming"


@dataclass(frozen=True)
class LocalModel:
    name: str  # what to pass to --model
    format: str
    where: str
    path: Optional[Path]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _is_whisper(path: Path) -> bool:
    """A CTranslate2 folder with Whisper's config fields, or a Transformers folder whose model_type is whisper."""
    config = _read_json(path / "config.json") if path.is_dir() else {}
    if resolve._is_ctranslate2_dir(path):
        return bool({"alignment_heads", "suppress_ids", "lang_ids"} & set(config)) or (path / "tokenizer.json").is_file()
    return resolve._is_transformers_dir(path) and config.get("model_type") == "whisper"


def _registry() -> List[LocalModel]:
    found = []
    for name, entry in resolve.REGISTRY.items():
        folders = [resolve._module_dir(m) for m in entry.modules]
        if any(folder is None for folder in folders):
            continue
        joined = cache_root() / "models" / name
        if len(folders) == 1:
            path = next((c for c in (folders[0] / "model", folders[0] / "data", folders[0]) if resolve._is_ctranslate2_dir(c)), None)
        else:
            path = joined if (joined / "model.bin").is_file() else None
        where = f"package {entry.packages.replace(' ', ' + ')}" + ("" if len(folders) == 1 else " (parts joined on first use)")
        found.append(LocalModel(name, "CTranslate2", where, path))
    return found


def _hub_cache() -> List[LocalModel]:
    by_repo: Dict[str, str] = {}
    for size, repos in resolve.HUB_REPOS.items():
        for repo in repos:
            by_repo.setdefault(repo, size)
    found = []
    for repo_dir in sorted(hub.cache_dir().glob("models--*")):
        repo = repo_dir.name[len("models--"):].replace("--", "/", 1)
        for snapshot in sorted((repo_dir / "snapshots").glob("*")):
            if _is_whisper(snapshot):
                size = by_repo.get(repo)
                name = size if size and resolve.HUB_REPOS[size][0] == repo else repo
                found.append(LocalModel(name, resolve.weights_format(snapshot), "Hugging Face cache", snapshot))
                break
    return found


def _openai_cache() -> List[LocalModel]:
    folder = user_cache_home() / "whisper"
    return [LocalModel(p.stem if p.stem in resolve.KNOWN_SIZES else str(p), "openai-whisper .pt", "openai-whisper cache", p)
            for p in sorted(folder.glob("*.pt"))]


def _model_dir(model_dir: Optional[str]) -> List[LocalModel]:
    if not model_dir or not Path(model_dir).is_dir():
        return []
    return [LocalModel(p.name, resolve.weights_format(p), "--model-dir", p)
            for p in sorted(Path(model_dir).iterdir()) if resolve._usable(p, checkpoints=True)]


def local_models(model_dir: Optional[str] = None) -> List[LocalModel]:
    return _model_dir(model_dir) + _registry() + _hub_cache() + _openai_cache()


def listing(model_dir: Optional[str] = None) -> str:
    """The text `--list-models` prints."""
    models = local_models(model_dir)
    if not models:
        lines = ["No Whisper model found on this machine."]
    else:
        width = max(len(m.name) for m in models)
        lines = [f"{'--model':<{width}}  {'format':<18}  {'read by':<31}  where"]
        for m in models:
            readers = ALL_BACKENDS if m.format == "CTranslate2" else TORCH_ONLY
            lines.append(f"{m.name:<{width}}  {m.format:<18}  {readers:<31}  {m.where}" + (f": {m.path}" if m.path else ""))
    lines.append(f"Size names: {', '.join(resolve.KNOWN_SIZES)}; fetch one with: hf download <repo> "
                 f"(e.g. {resolve.HUB_REPOS['small'][0]}), or pass a folder with --model PATH.")
    return "\n".join(lines)
