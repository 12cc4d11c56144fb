"""Streaming policies chosen by name (`--backend-policy`)."""

from __future__ import annotations

from typing import Optional

from whisperlivekit.asr.types import StreamingPolicy
from whisperlivekit.config import Settings


def make_policy(settings: Settings, language: Optional[str]) -> StreamingPolicy:
    if settings.backend_policy == "localagreement":
        from whisperlivekit.asr.local_agreement import LocalAgreementPolicy

        return LocalAgreementPolicy(settings.buffer_trimming_s, language=language, task=settings.task)
    if settings.backend_policy == "simulstreaming":
        from whisperlivekit.asr.simulstreaming import SimulStreamingPolicy

        return SimulStreamingPolicy(
            frame_threshold=settings.frame_threshold, audio_max_len_s=settings.audio_max_len_s,
            max_context_tokens=settings.max_context_tokens, beams=settings.beam_size, init_prompt=settings.init_prompt,
            language=language, task=settings.task,
        )
    raise ValueError(f"unknown streaming policy {settings.backend_policy!r}")
