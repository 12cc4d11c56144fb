"""Whisper inference backends, chosen by name the uvicorn way: a table of import paths.

A backend is named by `--backend`; which class runs depends on the streaming policy,
because AlignAtt needs the decoder's cross-attention and so its own inference path.
The table below is the whole truth about which backend supports which policy;
`Settings` checks a combination against it before anything is loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Tuple

if TYPE_CHECKING:
    from whisperlivekit.asr.types import WhisperBackend
    from whisperlivekit.config import Settings

# (backend name, policy name) -> "module:Class"; each class has `from_settings(settings, model_path, device, lanes)`.
BACKENDS: Dict[Tuple[str, str], str] = {
    ("faster-whisper", "localagreement"): "whisperlivekit.asr.backends.faster_whisper:FasterWhisperBackend",
    ("torch", "localagreement"): "whisperlivekit.asr.backends.torch_whisper:TorchWhisperBackend",
    ("torch", "simulstreaming"): "whisperlivekit.asr.backends.alignatt:AlignAttBackend",
}

# Backends that read every weight format (CTranslate2, openai-whisper `.pt`, Hugging Face Transformers);
# faster-whisper reads CTranslate2 folders only.
CHECKPOINT_BACKENDS = frozenset({"torch"})

# `--backend simulstreaming` names a policy, kept as the documented shorthand for this pair.
BACKEND_ALIASES: Dict[str, Tuple[str, str]] = {"simulstreaming": ("torch", "simulstreaming")}


# What each backend imports beyond the base install's torch; `--backend auto` skips a backend missing one.
REQUIRES: Dict[str, Tuple[str, ...]] = {"faster-whisper": ("faster_whisper", "ctranslate2"), "torch": ()}


def installed(backend: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in REQUIRES.get(backend, ()))


def backend_names() -> Tuple[str, ...]:
    return tuple(dict.fromkeys(name for name, _ in BACKENDS))


def supported_policies(backend: str) -> Tuple[str, ...]:
    return tuple(policy for name, policy in BACKENDS if name == backend)


def backend_for_policy(policy: str) -> str:
    """The first backend that supports `policy` and is installed (what `--backend auto` means).

    On the lent GPU host (torch, no CTranslate2) `auto` named faster-whisper and the server
    failed at start-up, though the torch backend runs the same model there. With none of
    them installed, the first is named, and loading it says what to install."""
    candidates = [name for name, supported in BACKENDS if supported == policy]
    if not candidates:
        raise ValueError(f"no backend supports the streaming policy {policy!r}")
    return next((name for name in candidates if installed(name)), candidates[0])


def check_combination(backend: str, policy: str) -> None:
    """Raise a ValueError that says what to pass instead when `backend` cannot run `policy`."""
    if (backend, policy) in BACKENDS:
        return
    if backend not in backend_names():
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(backend_names())}")
    raise ValueError(
        f"the {backend} backend cannot run the {policy} policy (it supports: {', '.join(supported_policies(backend))}); "
        f"use --backend {backend_for_policy(policy)} --backend-policy {policy}"
    )


def load_backend(settings: "Settings", model_path: Path, device: str, lanes: int = 1) -> "WhisperBackend":
    """Build the backend `settings` name on `device` (blocking: loads weights)."""
    module_name, _, class_name = BACKENDS[(settings.backend, settings.backend_policy)].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class.from_settings(settings, model_path, device, lanes)
