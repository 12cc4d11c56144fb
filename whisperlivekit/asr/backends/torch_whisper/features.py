"""Whisper's log-mel features in torch, batched and on the model's device.

The arithmetic of faster-whisper's `FeatureExtractor` (and openai-whisper's): a
400-sample periodic Hann STFT every 160 samples (10 ms), centred with reflection,
the last frame dropped, power through the Slaney mel filter bank (taken from
faster-whisper, which computes it in numpy), log10 clamped at 1e-10, floored 8
below each row's maximum, then scaled to about [-1, 1]. Each row is one request's
window, so its maximum (and so its features) never depends on the batch.
"""

from __future__ import annotations

from functools import lru_cache

import torch

N_FFT = 400
HOP = 160


@lru_cache(maxsize=4)
def _filters(n_mels: int, device: str) -> torch.Tensor:
    from faster_whisper.feature_extractor import FeatureExtractor

    bank = FeatureExtractor.get_mel_filters(16000, N_FFT, n_mels=n_mels)
    return torch.from_numpy(bank).float().to(device)


@lru_cache(maxsize=4)
def _window(device: str) -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True, device=device)


def log_mel(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """(B, samples) float32 at 16 kHz → (B, n_mels, samples // 160) features."""
    device = str(audio.device)
    spectrum = torch.stft(audio.float(), N_FFT, HOP, window=_window(device), center=True,
                          pad_mode="reflect", return_complex=True)
    power = spectrum[..., :-1].abs() ** 2
    mel = _filters(n_mels, device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log_spec + 4.0) / 4.0
