"""Every container ffmpeg reads is decoded from its first sample; a stream with no audio is empty, not broken.

The decoder is fed as a client feeds the server (2,000-byte slices) and its PCM is
lined up with the source clip by cross-correlation.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

import audio_assets
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.audio.decode import FFmpegDecoder
from whisperlivekit.errors import DecodeError

# (container, ffmpeg encoder arguments); what browsers and scripts send
FORMATS = {
    "webm-opus": ["-c:a", "libopus", "-b:a", "32k", "-frame_duration", "20", "-cluster_time_limit", "100", "-f", "webm"],
    "ogg-opus": ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "32k", "-f", "mp3"],
    "flac": ["-c:a", "flac", "-f", "flac"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
}
MAX_START_OFFSET_SAMPLES = 16  # 1 ms: codec delay is compensated by ffmpeg; what we guard against is lost audio
MAX_MISSING_S = 0.03  # decoded length may differ from the source by a codec frame at most


@pytest.fixture(scope="module")
def harvard_pcm() -> bytes:
    path, _ = audio_assets.harvard()
    return subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1",
                           "-ar", str(SAMPLE_RATE), "-"], check=True, capture_output=True).stdout


def encode(pcm: bytes, fmt: str) -> bytes:
    """A file as a recorder writes it (to a seekable file: MP3 gets its LAME header with the encoder delay)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip"
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(SAMPLE_RATE),
                        "-ac", "1", "-i", "-", *FORMATS[fmt], str(path)], input=pcm, check=True, capture_output=True)
        return path.read_bytes()


async def decode(payload: bytes, slice_bytes: int = 2_000) -> np.ndarray:
    decoder = FFmpegDecoder(label="[test]")
    await decoder.start()
    chunks = []

    async def collect() -> None:
        async for chunk in decoder.chunks():
            chunks.append(chunk)

    reader = asyncio.create_task(collect())
    try:
        for offset in range(0, len(payload), slice_bytes):
            await decoder.feed(payload[offset : offset + slice_bytes])
        await decoder.finish()
        await reader
    finally:
        reader.cancel()
        await decoder.close()
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def start_offset_samples(source: np.ndarray, decoded: np.ndarray) -> int:
    """k such that decoded[k + i] ≈ source[i]; negative when the decoder lost the first -k samples."""
    size = 1 << int(np.ceil(np.log2(len(source) + len(decoded))))
    correlation = np.fft.irfft(np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(source, size)), size)
    k = int(np.argmax(correlation))
    return k - size if k > size // 2 else k


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_decoded_audio_starts_at_the_first_sample_of_the_source(fmt, harvard_pcm):
    source = np.frombuffer(harvard_pcm, "<i2").astype(np.float32) / 32768.0
    decoded = asyncio.run(decode(encode(harvard_pcm, fmt)))
    offset = start_offset_samples(source, decoded)
    assert abs(offset) <= MAX_START_OFFSET_SAMPLES, f"{fmt}: decoded audio starts {-offset / SAMPLE_RATE:.3f} s late"
    missing_s = (len(source) - len(decoded)) / SAMPLE_RATE
    assert missing_s <= MAX_MISSING_S, f"{fmt}: {missing_s:.3f} s of the source missing"


def test_a_stream_with_no_bytes_decodes_to_no_audio_without_an_error():
    assert len(asyncio.run(decode(b""))) == 0


@pytest.mark.parametrize("fmt", ["webm-opus", "ogg-opus"])
def test_a_container_header_without_audio_decodes_to_no_audio_without_an_error(fmt, harvard_pcm):
    payload = encode(harvard_pcm, fmt)
    header = payload[: payload.find(b"\x1f\x43\xb6\x75")] if fmt == "webm-opus" else payload[:200]  # before the first Cluster / audio page
    assert 0 < len(header) < 1000
    assert len(asyncio.run(decode(header))) == 0


def test_bytes_that_are_no_audio_format_are_still_a_decode_error():
    with pytest.raises(DecodeError, match="Could not decode audio"):
        asyncio.run(decode(bytes(range(256)) * 40))
