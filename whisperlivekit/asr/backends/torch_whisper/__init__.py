"""Our own PyTorch Whisper (no openai-whisper): the model (`model.py`), log-mel features
(`features.py`), batched greedy decoding (`decoding.py`), word times from cross-attention
(`alignment.py`) and the `torch` backend for LocalAgreement (`backend.py`)."""

from whisperlivekit.asr.backends.torch_whisper.backend import TorchWhisperBackend

__all__ = ["TorchWhisperBackend"]
