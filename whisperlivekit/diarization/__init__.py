"""Speaker diarization: who speaks when, streamed per connection.

Two backends behind `DiarizationModel`, chosen by name:

- `embedding`: a pretrained speaker encoder (CAM++, shipped as ONNX) over
  speech runs, with online clustering and re-clustering; light, runs on CPU;
  the CPU default.
- `sortformer`: NVIDIA's streaming Sortformer (NeMo); end to end, handles
  overlapped speech, meant for GPUs.

`assign_speakers` then gives each transcribed word its speaker.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Dict, Optional

from whisperlivekit.diarization.assign import assign_speakers
from whisperlivekit.diarization.types import DiarizationModel, DiarizationState, SpeakerSegment


def _embedding(device: str, model: Optional[str], max_speakers: int, **opts: Any) -> DiarizationModel:
    from whisperlivekit.diarization.embedding import EmbeddingDiarizer

    if model:
        opts.setdefault("weights_path", model)
    return EmbeddingDiarizer(device=device, max_speakers=max_speakers, **opts)


def _sortformer(device: str, model: Optional[str], max_speakers: int, **opts: Any) -> DiarizationModel:
    from whisperlivekit.diarization.sortformer import DEFAULT_MODEL, SortformerDiarizer

    return SortformerDiarizer(model or DEFAULT_MODEL, device=device, max_speakers=max_speakers, **opts)


BACKENDS: Dict[str, Callable[..., DiarizationModel]] = {
    "embedding": _embedding,
    "sortformer": _sortformer,
}


def nemo_installed() -> bool:
    """Whether NeMo (Sortformer's toolkit) can be imported here, without importing it (seconds, GBs)."""
    return importlib.util.find_spec("nemo") is not None


def choose_backend(requested: str, device: str, model: Optional[str], nemo_installed: bool) -> str:
    """Resolve `auto`: Sortformer on GPUs, but only where NeMo is installed, since the default install
    lacks it and a GPU host with `--diarization` must still label speakers; a model file names its
    backend by its suffix."""
    if requested != "auto":
        return requested
    if model and model.endswith(".onnx"):
        return "embedding"
    if model and model.endswith(".nemo"):
        return "sortformer"
    return "sortformer" if device.startswith("cuda") and nemo_installed else "embedding"


def diarizer_device(backend: str, device: str, onnx_cuda: bool) -> str:
    """Where the diarizer for `device` runs: the embedding diarizer follows its GPU only where ONNX Runtime
    has a CUDA provider (onnxruntime-gpu); else the CPU, since its 7 M-parameter encoder on one thread is
    cheap there and refusing to diarize on a GPU host is not."""
    if backend == "embedding" and device.startswith("cuda") and not onnx_cuda:
        return "cpu"
    return device


def load_diarizer(
    backend: str, device: str, model: Optional[str] = None, max_speakers: int = 4, **opts: Any
) -> DiarizationModel:
    """Load a diarization backend by name on `device` ("cpu", "cuda:N").

    `model` is backend specific: a speaker-encoder `.onnx` file for `embedding`, a
    `.nemo` file or hub name for `sortformer`. `opts` go to the backend's
    constructor (thresholds, chunk lengths, ...).
    """
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"Unknown diarization backend '{backend}'; choose one of: {', '.join(BACKENDS)}") from None
    return factory(device, model, max_speakers, **opts)


__all__ = [
    "BACKENDS",
    "DiarizationModel",
    "DiarizationState",
    "SpeakerSegment",
    "assign_speakers",
    "choose_backend",
    "diarizer_device",
    "load_diarizer",
    "nemo_installed",
]
