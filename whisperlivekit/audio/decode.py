"""Client bytes → 16 kHz mono float32 PCM.

Browsers send WebM/Opus slices; scripts may send anything ffmpeg reads, or raw
PCM s16le in `--pcm-input` mode. Each connection gets its own decoder; the
ffmpeg child is always reaped in `close()`, whatever happened before.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from typing import AsyncIterator, Optional, Protocol, Sequence

import numpy as np

from whisperlivekit.errors import DecodeError
from whisperlivekit.audio import SAMPLE_RATE

_READ_BYTES = 3_200  # 100 ms of s16le at 16 kHz
# ffmpeg's words for "the input ended while reading the container header" (AVERROR_EOF, truncated Matroska)
_END_BEFORE_AUDIO = ("End of file", "File ended prematurely")

logger = logging.getLogger(__name__)


class AudioDecoder(Protocol):
    """Incremental decoder: bytes in with `feed`, PCM out of `chunks()`."""

    async def start(self) -> None: ...
    async def feed(self, data: bytes) -> None: ...
    async def finish(self) -> None: ...
    def chunks(self) -> AsyncIterator[np.ndarray]: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class InputFormat:
    """What one connection sends: a container for ffmpeg (`pcm=False`), or raw s16le PCM at
    `sample_rate_hz` with `channels` interleaved channels (resampled and mixed to 16 kHz mono)."""

    pcm: bool = False
    sample_rate_hz: int = SAMPLE_RATE
    channels: int = 1

    @property
    def passthrough(self) -> bool:
        """Raw PCM already at 16 kHz mono: no ffmpeg, queued in the server as it arrives."""
        return self.pcm and self.sample_rate_hz == SAMPLE_RATE and self.channels == 1

    @property
    def bytes_per_s(self) -> Optional[int]:
        """Bytes per second of input for PCM; None for containers (unknown until decoded)."""
        return 2 * self.sample_rate_hz * self.channels if self.pcm else None


def pcm16_to_float32(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


class PCMPassthrough:
    """Raw PCM s16le 16 kHz mono; carries an odd trailing byte over to the next frame."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Optional[np.ndarray]] = asyncio.Queue()
        self._carry = b""

    async def start(self) -> None:
        return None

    async def feed(self, data: bytes) -> None:
        data = self._carry + data
        usable = len(data) - (len(data) % 2)
        self._carry = data[usable:]
        if usable:
            await self._queue.put(pcm16_to_float32(data[:usable]))

    async def finish(self) -> None:
        await self._queue.put(None)

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                return
            yield chunk

    async def close(self) -> None:
        return None


class FFmpegDecoder:
    """One ffmpeg process decoding a byte stream from its stdin, incrementally.

    A small probe (`-probesize 4096 -analyzeduration 0`) makes ffmpeg start
    decoding after the first few KB instead of buffering seconds of input.
    `-fflags nobuffer` is deliberately absent: it makes ffmpeg drop the packets
    it read while probing, so MP3 lost its first ~0.5-1.3 s, WAV and FLAC their
    first 70-130 ms and Opus its first 20 ms. Without it every format starts at
    sample 0, and WebM's decode delay is no worse (tests/test_input_formats.py).

    A stream that ends before any audio (only the empty end frame, or a
    container header and the end frame) is an empty recording, not a decode
    error: `chunks()` then ends without PCM and without raising.
    """

    def __init__(self, ffmpeg: str = "ffmpeg", label: str = "", input_args: Sequence[str] = ()) -> None:
        self._ffmpeg = ffmpeg
        self._input_args = list(input_args)  # e.g. `-f s16le -ar 48000 -ac 1` for raw PCM to resample
        self._label = label
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._stderr_tail = b""
        self._stderr_task: Optional[asyncio.Task] = None
        self._closed = False
        self._fed_bytes = 0

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        if shutil.which(self._ffmpeg) is None:
            raise DecodeError(
                "ffmpeg is not installed on the server; install it (apt-get install ffmpeg) "
                "or stream raw PCM with --pcm-input"
            )
        self._proc = await asyncio.create_subprocess_exec(
            self._ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
            "-probesize", "4096", "-analyzeduration", "0",
            *self._input_args, "-i", "pipe:0",
            "-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        logger.debug("%s ffmpeg started (pid %s)", self._label, self._proc.pid)

    async def _drain_stderr(self) -> None:
        assert self._proc and self._proc.stderr
        while True:
            line = await self._proc.stderr.read(1024)
            if not line:
                return
            self._stderr_tail = (self._stderr_tail + line)[-2000:]

    def _failure(self) -> DecodeError:
        detail = self._stderr_tail.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else "ffmpeg stopped"
        return DecodeError(f"Could not decode audio: {reason}")

    def _ended_before_audio(self) -> bool:
        """True when the input held no audio at all: nothing was fed, or ffmpeg hit the end of the
        input while still reading the container header (it says "End of file" / "ended prematurely");
        bytes it cannot read at all say "Invalid data" instead and stay a decode error."""
        if self._fed_bytes == 0:
            return True
        tail = self._stderr_tail.decode(errors="replace")
        return any(marker in tail for marker in _END_BEFORE_AUDIO)

    async def feed(self, data: bytes) -> None:
        assert self._proc and self._proc.stdin
        if self._proc.returncode is not None:
            raise self._failure()
        self._fed_bytes += len(data)
        try:
            self._proc.stdin.write(data)
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise self._failure() from exc

    async def finish(self) -> None:
        if self._proc and self._proc.stdin and not self._proc.stdin.is_closing():
            try:
                self._proc.stdin.close()
                await self._proc.stdin.wait_closed()
            except (BrokenPipeError, ConnectionResetError):
                pass

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        assert self._proc and self._proc.stdout
        carry = b""
        produced = False
        while True:
            data = await self._proc.stdout.read(_READ_BYTES)
            if not data:
                break
            data = carry + data
            usable = len(data) - (len(data) % 2)
            carry = data[usable:]
            if usable:
                produced = True
                yield pcm16_to_float32(data[:usable])
        returncode = await self._proc.wait()
        if self._stderr_task:
            await asyncio.wait([self._stderr_task], timeout=1.0)
        if not produced and self._ended_before_audio():
            logger.debug("%s input ended before any audio (%d bytes)", self._label, self._fed_bytes)
            return
        if returncode != 0 or (not produced and self._stderr_tail):
            raise self._failure()

    async def close(self) -> None:
        """Kill and reap the child; idempotent, safe from `finally`."""
        if self._closed or self._proc is None:
            return
        self._closed = True
        proc = self._proc
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(proc.wait(), timeout=5.0)
        except asyncio.TimeoutError:  # pragma: no cover - kill() makes this near impossible
            logger.error("%s ffmpeg pid %s did not exit after kill", self._label, proc.pid)
        if self._stderr_task:
            self._stderr_task.cancel()
        # Reaping the child does not close its pipes: a stdout nobody reads any more (the
        # connection dropped) is paused with a full buffer, never sees EOF, and its socket and
        # buffered PCM stay until a GC cycle (measured: ~70 descriptors and ~20 KB RSS per
        # dropped connection under uvloop). asyncio has no public way to close them, so close
        # the process transport, which closes all three pipes.
        transport = getattr(proc, "_transport", None)
        if transport is not None:
            transport.close()


def make_decoder(pcm_input: bool, label: str = "") -> AudioDecoder:
    return decoder_for(InputFormat(pcm=pcm_input), label)


def decoder_for(fmt: InputFormat, label: str = "") -> AudioDecoder:
    """16 kHz mono PCM goes straight through; other PCM is resampled and mixed by ffmpeg (its
    resampler, not a hand-written one), containers are decoded by ffmpeg."""
    if fmt.passthrough:
        return PCMPassthrough()
    if fmt.pcm:
        raw = ("-f", "s16le", "-ar", str(fmt.sample_rate_hz), "-ac", str(fmt.channels))
        return FFmpegDecoder(label=label, input_args=raw)
    return FFmpegDecoder(label=label)
