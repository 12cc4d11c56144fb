"""Whole uploaded files → 16 kHz mono float32, with ffmpeg reading from a temporary file.

Unlike a live stream, a file is complete before decoding starts, so ffmpeg gets a real
file (it can seek: MP4/M4A with the index at the end decode, which a pipe cannot) and its
usual probing. ffmpeg is killed if the request is cancelled, and the file is always removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile

import numpy as np

from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.errors import DecodeError

logger = logging.getLogger(__name__)


async def decode_file(data: bytes, ffmpeg: str = "ffmpeg") -> np.ndarray:
    """The file's audio as float32 samples at `SAMPLE_RATE`; `DecodeError` when ffmpeg cannot read it."""
    if not data:
        raise DecodeError("Could not decode audio: the file is empty")
    if shutil.which(ffmpeg) is None:
        raise DecodeError("ffmpeg is not installed on the server; install it (apt-get install ffmpeg)")
    fd, path = tempfile.mkstemp(prefix="wlk-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        proc = await asyncio.create_subprocess_exec(
            ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-i", path,
            "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            pcm, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:  # cancelled: do not leave ffmpeg behind
                proc.kill()
                await proc.wait()
    finally:
        os.unlink(path)
    detail = stderr.decode(errors="replace").replace(path + ": ", "").replace(path, "the file").strip().splitlines()
    if proc.returncode != 0 or not pcm:
        reason = detail[-1] if detail else "no audio stream in the file"
        raise DecodeError(f"Could not decode audio: {reason}")
    usable = len(pcm) - len(pcm) % 2
    return np.frombuffer(pcm[:usable], dtype=np.int16).astype(np.float32) / 32768.0
