"""Whisper's log-mel features in torch, batched and on the model's device.

The arithmetic Whisper was trained with: a 400-sample periodic Hann STFT every
160 samples (10 ms), centred with reflection, the last frame dropped, power
through a Slaney-style mel filter bank (triangles on the Slaney mel scale,
linear below 1 kHz and logarithmic above, each scaled to unit area), log10
clamped at 1e-10, floored 8 below each row's maximum, then scaled to about
[-1, 1]. Each row is one request's window, so its maximum (and so its
features) never depends on the batch.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160

_LINEAR_HZ_PER_MEL = 200.0 / 3  # below 1 kHz the Slaney scale is linear
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = math.log(6.4) / 27.0  # mels per log-Hz above the break


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz < _BREAK_HZ, hz / _LINEAR_HZ_PER_MEL,
                    _BREAK_MEL + np.log(np.maximum(hz, 1e-12) / _BREAK_HZ) / _LOG_STEP)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel < _BREAK_MEL, mel * _LINEAR_HZ_PER_MEL, _BREAK_HZ * np.exp(_LOG_STEP * (mel - _BREAK_MEL)))


def mel_filter_bank(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, Slaney scale and area normalisation."""
    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(sample_rate / 2)), n_mels + 2))
    low, centre, high = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None] - low) / (centre - low)
    falling = (high - bins_hz[None]) / (high - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * (2.0 / (high - low))).astype(np.float32)


@lru_cache(maxsize=4)
def _filters(n_mels: int, device: str) -> torch.Tensor:
    return torch.from_numpy(mel_filter_bank(n_mels)).to(device)


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
