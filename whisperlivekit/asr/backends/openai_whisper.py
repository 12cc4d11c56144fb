"""openai-whisper (PyTorch) backend: the reference implementation, on `cpu` or `cuda:N`.

Slower than faster-whisper, but it is the model Whisper's authors ship, so it is
the yardstick for the CTranslate2 path and runs wherever PyTorch does. Given a
CTranslate2 directory it converts it once into a cached checkpoint (`convert.py`).

Decoding matches `FasterWhisperBackend` so the two are interchangeable: greedy
(temperature 0, no fallback), the committed text as prompt, no timestamp tokens
(one segment per 30 s window; word times come from cross-attention alignment),
and no conditioning on earlier windows. openai-whisper has no batched
transcription, so a batch runs request by request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from whisperlivekit.asr.types import TranscribeRequest, TranscribeResult, Word
from whisperlivekit.errors import DeviceError, ModelLoadError, WhisperLiveKitError, device_faults
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.asr.backends.gpu_memory import release_cuda_cache

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "openai-whisper is not installed; on CPU machines: "
    "pip install --no-deps openai-whisper && pip install numba tiktoken more-itertools tqdm"
)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_openai_model(model_path: Path, device: str, cache_dir: "str | Path | None" = None):
    """(whisper module, model on `device`, the checkpoint's own alignment heads or None).

    Shared by the openai-whisper and AlignAtt backends: a CTranslate2 directory is
    converted once (cached under `cache_dir`, `--cache-dir`); a device failure becomes DeviceError, every other one a
    one-line ModelLoadError.
    """
    try:
        import whisper  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ModelLoadError(INSTALL_HINT) from exc
    from whisperlivekit.weights.convert import ensure_openai_checkpoint, read_alignment_heads

    model_path = Path(model_path)
    try:
        checkpoint = ensure_openai_checkpoint(model_path, cache_dir)
        with device_faults(device, "loading openai-whisper"):
            model = whisper.load_model(str(checkpoint), device=device)
    except DeviceError:
        raise
    except WhisperLiveKitError as exc:
        raise ModelLoadError(f"Could not load openai-whisper model from {model_path}: {exc}") from exc
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/KeyError for bad files and devices
        raise ModelLoadError(
            f"Could not load openai-whisper model from {model_path} on {device}: {_one_line(exc)}"
        ) from exc
    try:
        heads = read_alignment_heads(checkpoint)
    except (RuntimeError, OSError, ValueError):  # legacy (non-zip) checkpoints cannot be mmapped; they carry no heads
        heads = None
    return whisper, model, heads


class OpenAIWhisperBackend:
    name = "openai-whisper"

    @classmethod
    def from_settings(cls, settings, model_path: Path, device: str, lanes: int) -> "OpenAIWhisperBackend":
        return cls(model_path, device=device, beam_size=settings.beam_size, cache_dir=settings.cache_dir)

    def __init__(self, model_path: Path, device: str = "cpu", beam_size: int = 1, cache_dir: "str | Path | None" = None) -> None:
        model_path = Path(model_path)
        _, model, heads = load_openai_model(model_path, device, cache_dir)
        if heads is not None:
            model.set_alignment_heads(heads)
            model.to(device)
        model.eval()

        self._model: Any = model
        self.device = device
        self.model_label = model_path.name if model_path.name != "model" else str(model_path)
        self.beam_size = beam_size
        self.multilingual = bool(model.is_multilingual)
        self._fp16 = device.startswith("cuda")

    def _decode_options(self, request: TranscribeRequest) -> Dict[str, Any]:
        options: Dict[str, Any] = {
            "language": request.language if self.multilingual else "en",
            "task": request.task,
            "temperature": 0.0,
            "initial_prompt": request.prompt.strip() or None,
            "word_timestamps": True,
            "condition_on_previous_text": False,
            "without_timestamps": True,
            "fp16": self._fp16,
            "verbose": None,
        }
        if self.beam_size > 1:
            options["beam_size"] = self.beam_size
        return options

    def _transcribe_one(self, request: TranscribeRequest) -> TranscribeResult:
        audio = np.ascontiguousarray(request.audio, dtype=np.float32)
        duration_s = len(audio) / SAMPLE_RATE
        if len(audio) == 0:
            return TranscribeResult(words=[], language=request.language or (None if self.multilingual else "en"))
        result = self._model.transcribe(audio, **self._decode_options(request))
        words: List[Word] = []
        for segment in result.get("segments", []):
            for w in segment.get("words", []):
                start = min(float(w["start"]), duration_s)
                words.append(Word(start, min(max(float(w["end"]), start), duration_s), w["word"], float(w["probability"])))
        language: Optional[str] = result.get("language") or request.language
        return TranscribeResult(words=words, language=language)

    def transcribe_batch(self, requests: Sequence[TranscribeRequest]) -> List[TranscribeResult]:
        """A torch device failure (CUDA error, out of memory) comes out as `DeviceError`."""
        with device_faults(self.device, "inference"):
            return [self._transcribe_one(request) for request in requests]

    def close(self) -> None:
        if getattr(self, "_model", None) is not None:
            self._model = None
            release_cuda_cache(self.device)
