"""Backends chosen by name, the uvicorn way: a small table of loaders."""

from __future__ import annotations

from pathlib import Path

from whisperlivekit.asr.types import WhisperBackend
from whisperlivekit.config import Settings


def load_backend(settings: Settings, model_path: Path, device: str, lanes: int = 1) -> WhisperBackend:
    if settings.backend_policy == "simulstreaming":
        from whisperlivekit.asr.alignatt_backend import AlignAttBackend

        return AlignAttBackend(
            model_path, device=device, model_name=settings.model, lanes=lanes, cpu_threads=settings.cpu_threads,
            min_window_s=settings.min_encoder_window_s,
        )
    if settings.backend == "faster-whisper" and settings.backend_policy == "localagreement":
        from whisperlivekit.asr.faster_whisper_backend import FasterWhisperBackend

        return FasterWhisperBackend(
            model_path, device=device, compute_type=settings.compute_type, beam_size=settings.beam_size,
            min_window_s=settings.min_encoder_window_s, cpu_threads=settings.cpu_threads, lanes=lanes,
        )
    if settings.backend == "openai-whisper":
        from whisperlivekit.asr.openai_whisper_backend import OpenAIWhisperBackend

        return OpenAIWhisperBackend(model_path, device=device, beam_size=settings.beam_size)
    raise ValueError(f"unknown backend {settings.backend!r} with policy {settings.backend_policy!r}")
