"""Kaldi-style log-mel filterbank features in numpy: what CAM++ was trained on.

25 ms Povey-windowed frames every 10 ms, DC removed, pre-emphasis 0.97, a 512-point
power spectrum, 80 triangular mel bands (20 Hz to 8 kHz) and the natural log, on
samples scaled to the 16-bit range, as Kaldi's `compute-fbank-feats` (dither 0)
computes them. numpy only, so the CPU diarizer needs no torch/torchaudio.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
FRAME = 400  # 25 ms
SHIFT = 160  # 10 ms
N_FFT = 512
N_MELS = 80


def _mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + hz / 700.0)


def _mel_matrix(n_mels: int = N_MELS, low_hz: float = 20.0, high_hz: float = SAMPLE_RATE / 2) -> np.ndarray:
    """(n_mels, N_FFT // 2 + 1) triangles, equally spaced on the mel scale (the Nyquist bin left out)."""
    low, high = _mel(np.float64(low_hz)), _mel(np.float64(high_hz))
    step = (high - low) / (n_mels + 1)
    bins = _mel(np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT)
    matrix = np.zeros((n_mels, N_FFT // 2 + 1))
    for i in range(n_mels):
        left, center, right = low + i * step, low + (i + 1) * step, low + (i + 2) * step
        matrix[i] = np.maximum(0.0, np.minimum((bins - left) / (center - left), (right - bins) / (right - center)))
    matrix[:, -1] = 0.0
    return matrix.astype(np.float32)


_MEL = _mel_matrix()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / (FRAME - 1))) ** 0.85
_FLOOR = float(np.finfo(np.float32).eps)


def fbank(audio: np.ndarray) -> np.ndarray:
    """(frames, 80) log-mel energies of 16 kHz float samples in [-1, 1]; no frames for under 25 ms."""
    samples = np.asarray(audio, dtype=np.float64) * 32768.0
    count = 1 + (len(samples) - FRAME) // SHIFT if len(samples) >= FRAME else 0
    if count <= 0:
        return np.zeros((0, N_MELS), np.float32)
    index = np.arange(FRAME)[None, :] + SHIFT * np.arange(count)[:, None]
    frames = samples[index]
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= 0.97 * frames[:, :-1].copy()
    frames[:, 0] *= 1.0 - 0.97
    power = np.abs(np.fft.rfft(frames * _WINDOW, N_FFT)) ** 2
    return np.log(np.maximum(power.astype(np.float32) @ _MEL.T, _FLOOR))
