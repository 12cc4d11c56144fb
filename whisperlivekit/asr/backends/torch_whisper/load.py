"""One Whisper on one device, from any weight format: what both PyTorch backends load.

The `torch` backend (LocalAgreement) and AlignAtt (SimulStreaming) run the same
model, tokenizer and features; this module is where the weights become that
model, at the precision the device wants, once per device.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from whisperlivekit.asr.backends.torch_whisper.model import Whisper, WhisperDims
from whisperlivekit.asr.backends.torch_whisper.tokenizer import WhisperTokenizer
from whisperlivekit.errors import DeviceError, ModelLoadError, device_faults

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_dtype(compute_type: str, device: str) -> torch.dtype:
    """float16 on CUDA unless told otherwise; float32 on the CPU, where float16 matmuls are slow (bfloat16 if asked)."""
    if compute_type in DTYPES and (device.startswith("cuda") or compute_type != "float16"):
        return DTYPES[compute_type]
    if compute_type not in ("auto", *DTYPES):
        logger.info("compute type %s is CTranslate2's; the PyTorch Whisper runs float32, float16 or bfloat16", compute_type)
    return torch.float16 if device.startswith("cuda") else torch.float32


@dataclass
class LoadedWhisper:
    """The model on its device, its tokenizer, and what the weights said about themselves."""

    model: Whisper
    tokenizer: WhisperTokenizer  # English, transcribe: `with_language` gives the others
    alignment_heads: Optional[List[Tuple[int, int]]]  # None: the weights name none
    source_format: str  # "ctranslate2", "openai", "huggingface"
    dtype: torch.dtype


def load_torch_whisper(model_path: Path, device: str = "cpu", compute_type: str = "auto", cpu_threads: int = 0,
                       lanes: int = 1) -> LoadedWhisper:
    """Read `model_path` (CTranslate2 directory, `.pt`, Hugging Face directory) onto `device`.

    A device failure (CUDA out of memory, a broken driver) comes out as `DeviceError`, so the
    allocator marks the device; anything wrong with the files as a one-line `ModelLoadError`.
    """
    from whisperlivekit.weights.torch_state import load_whisper_weights

    model_path = Path(model_path)
    weights = load_whisper_weights(model_path)
    dims = WhisperDims.from_dict(weights.dims)
    dtype = model_dtype(compute_type, device)
    try:
        with torch.device("meta"):  # no random initialisation: every tensor comes from the file
            model = Whisper(dims)
        model.load_state_dict(weights.state, strict=True, assign=True)
        with device_faults(device, "loading Whisper"):
            model = model.to(device=device, dtype=dtype).eval()
    except DeviceError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"Could not load {model_path} into the torch Whisper on {device}: "
                             f"{str(exc).splitlines()[0]}") from exc
    if device == "cpu":  # one lane per core (model_pool.lanes_for): each lane's ops get their share
        torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 1) // max(1, lanes)))
    if device.startswith("cuda"):
        # cuDNN's attention builds an execution plan for each new shape, and a decoder whose keys grow by one
        # token per step shows it a new shape nearly every step. On an H200 (torch 2.11, CUDA 13) py-spy put
        # 41-57 % of the device worker's CPU on the self-attention call while the GPU was 1-3 % busy. Flash,
        # memory-efficient and math attention need no plan; this is process-wide, as the threads setting above.
        torch.backends.cuda.enable_cudnn_sdp(False)
    tokenizer = WhisperTokenizer.from_file(weights.tokenizer_file, model.is_multilingual)
    return LoadedWhisper(model, tokenizer, weights.alignment_heads, weights.source_format, dtype)
