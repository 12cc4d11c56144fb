"""Our own PyTorch Whisper (no openai-whisper): the model (`model.py`), log-mel features
(`features.py`), batched greedy decoding (`decoding.py`), word times from cross-attention
(`alignment.py`) and the `torch` backend for LocalAgreement (`backend.py`)."""

from whisperlivekit.errors import ModelLoadError

try:
    import torch  # noqa: F401
except ImportError as exc:  # the backend table imports this package only when --backend torch is chosen
    raise ModelLoadError("the torch backend needs PyTorch: pip install torch") from exc

from whisperlivekit.asr.backends.torch_whisper.backend import TorchWhisperBackend  # noqa: E402

__all__ = ["TorchWhisperBackend"]
