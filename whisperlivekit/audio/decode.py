"""Client bytes → 16 kHz mono float32 PCM.

Browsers send WebM/Opus slices; scripts may send anything ffmpeg reads, or raw
PCM s16le in `--pcm-input` mode. Each connection gets its own decoder; the
ffmpeg child is always reaped in `close()`, whatever happened before.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import AsyncIterator, Optional, Protocol

import numpy as np

from whisperlivekit.errors import DecodeError
from whisperlivekit.audio import SAMPLE_RATE

_READ_BYTES = 3_200  # 100 ms of s16le at 16 kHz

logger = logging.getLogger(__name__)


class AudioDecoder(Protocol):
    """Incremental decoder: bytes in with `feed`, PCM out of `chunks()`."""

    async def start(self) -> None: ...
    async def feed(self, data: bytes) -> None: ...
    async def finish(self) -> None: ...
    def chunks(self) -> AsyncIterator[np.ndarray]: ...
    async def close(self) -> None: ...


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

    Low-latency flags make ffmpeg emit PCM as soon as a container slice is
    complete instead of buffering seconds of input for probing.
    """

    def __init__(self, ffmpeg: str = "ffmpeg", label: str = "") -> None:
        self._ffmpeg = ffmpeg
        self._label = label
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._stderr_tail = b""
        self._stderr_task: Optional[asyncio.Task] = None
        self._closed = False

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
            "-fflags", "nobuffer", "-probesize", "4096", "-analyzeduration", "0",
            "-i", "pipe:0",
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

    async def feed(self, data: bytes) -> None:
        assert self._proc and self._proc.stdin
        if self._proc.returncode is not None:
            raise self._failure()
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
    return PCMPassthrough() if pcm_input else FFmpegDecoder(label=label)
