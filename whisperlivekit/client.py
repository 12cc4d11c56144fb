"""A small `/asr` client: stream a file (as WebM/Opus, any container, or PCM) and collect updates.

Used by `scripts/stream_file.py`, the tests and the benchmarks, so they all talk
to the server exactly as a browser would: ~100 ms binary frames at (a multiple
of) real time, an empty frame at the end, then wait for `ready_to_stop`.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_lib
import subprocess
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from whisperlivekit.audio import SAMPLE_RATE



def load_pcm16(path: "str | Path") -> bytes:
    """Any audio file → PCM s16le 16 kHz mono bytes (through ffmpeg; a WAV already in that format is
    read directly, so hosts without ffmpeg, such as a bare GPU test host, can still stream it)."""
    try:
        with wave.open(str(path)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getcomptype()) == (SAMPLE_RATE, 1, 2, "NONE"):
                return w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError):
        pass
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"],
        check=True, capture_output=True,
    ).stdout


def encode_webm_opus(pcm: bytes, bitrate: str = "32k") -> bytes:
    """PCM s16le 16 kHz → WebM/Opus, as browsers' MediaRecorder produces it."""
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "-",
         "-c:a", "libopus", "-b:a", bitrate, "-frame_duration", "20", "-cluster_time_limit", "100", "-f", "webm", "-"],
        input=pcm, check=True, capture_output=True,
    ).stdout


@dataclass
class StreamResult:
    messages: List[dict] = field(default_factory=list)
    config: Optional[dict] = None
    close_code: Optional[int] = None
    close_reason: str = ""
    connect_s: float = 0.0  # open → config message
    first_partial_s: Optional[float] = None  # first audio frame → first non-empty text
    ended_with_ready_to_stop: bool = False
    commit_lags_s: List[float] = field(default_factory=list)  # per committed line: arrival − its end time in audio sent
    commit_texts: List[str] = field(default_factory=list)  # per commit lag: the words that commit added to its line
    partials_before_end: int = 0

    @property
    def updates(self) -> List[dict]:
        return [m for m in self.messages if "lines" in m]

    @property
    def final(self) -> Optional[dict]:
        updates = self.updates
        return updates[-1] if updates else None

    @property
    def text(self) -> str:
        final = self.final
        if not final:
            return ""
        parts = [line["text"] for line in final["lines"] if line.get("text")]
        if final.get("buffer_transcription"):
            parts.append(final["buffer_transcription"])
        return " ".join(p.strip() for p in parts if p.strip())


def _parse_time(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


async def stream(
    url: str,
    payload: bytes,
    *,
    pcm: bool,
    speed: float = 1.0,
    frame_ms: int = 100,
    send_end: bool = True,
    on_message: Optional[Callable[[dict], None]] = None,
    open_timeout: float = 30.0,
    headers: Optional[dict] = None,
    ssl: Optional[ssl_lib.SSLContext] = None,
) -> StreamResult:
    """Stream `payload` in frames at `speed`× real time; returns everything the server said.

    `ssl` is the context for a `wss://` URL (e.g. one that trusts a self-signed certificate);
    without it websockets uses the system's default trust store.
    """
    import websockets

    result = StreamResult()
    audio_s = len(payload) / (2 * SAMPLE_RATE) if pcm else None
    frame_bytes = int(SAMPLE_RATE * 2 * frame_ms / 1000) if pcm else max(1, int(len(payload) * frame_ms / 1000 / _webm_duration_s(payload)))
    opened = time.monotonic()
    sent_audio_s = 0.0
    sent_at: List[tuple] = []  # (audio time, monotonic)
    committed_ends: set = set()
    line_texts: Dict[int, str] = {}  # each line's text at the last update, to tell what a commit added
    tls = {"ssl": ssl} if ssl is not None else {}
    async with websockets.connect(url, max_size=None, open_timeout=open_timeout, additional_headers=headers, **tls) as ws:
        async def receive() -> None:
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    now = time.monotonic()
                    result.messages.append(message)
                    if on_message:
                        on_message(message)
                    if message.get("type") == "config":
                        result.config = message
                        result.connect_s = now - opened
                    elif message.get("type") == "ready_to_stop":
                        result.ended_with_ready_to_stop = True
                    elif "lines" in message:
                        has_text = bool(message.get("buffer_transcription")) or any(l.get("text") for l in message["lines"])
                        if has_text and result.first_partial_s is None and sent_at:
                            result.first_partial_s = now - sent_at[0][1]
                        if message.get("buffer_transcription") and not sending_done.is_set():
                            result.partials_before_end += 1
                        for index, line in enumerate(message["lines"]):
                            text = line.get("text") or ""
                            if text and line["end"] not in committed_ends:
                                committed_ends.add(line["end"])
                                end_s = _parse_time(line["end"])
                                sent = next((t for a, t in sent_at if a >= end_s), None)
                                if sent is not None and not sending_done.is_set():
                                    result.commit_lags_s.append(now - sent)
                                    before = line_texts.get(index, "")
                                    result.commit_texts.append((text[len(before):] if text.startswith(before) else text).strip())
                            if text:
                                line_texts[index] = text
            except websockets.ConnectionClosed:
                pass

        sending_done = asyncio.Event()
        receiver = asyncio.create_task(receive())
        start = time.monotonic()
        try:
            for offset in range(0, len(payload), frame_bytes):
                frame = payload[offset : offset + frame_bytes]
                if pcm:
                    sent_audio_s += len(frame) / (2 * SAMPLE_RATE)
                else:
                    sent_audio_s += frame_ms / 1000
                await ws.send(frame)
                sent_at.append((sent_audio_s, time.monotonic()))
                delay = start + sent_audio_s / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if send_end:
                await ws.send(b"")
        except websockets.ConnectionClosed:
            pass
        sending_done.set()
        await receiver
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    del audio_s
    return result


def _webm_duration_s(payload: bytes) -> float:
    """Duration of an encoded file (ffprobe), to pace container bytes in real time."""
    import tempfile

    # from a file, not a pipe: ffprobe cannot tell a WAV's duration from a pipe (it would fall back to the
    # bitrate guess below and pace a 44.1 kHz WAV at a tenth of real time)
    with tempfile.NamedTemporaryFile(suffix=".audio") as file:
        file.write(payload)
        file.flush()
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "default=nw=1:nk=1", file.name],
            capture_output=True,
        ).stdout.decode().strip()
    try:
        return max(0.1, float(out))
    except ValueError:
        return max(0.1, len(payload) / 4000)  # ~32 kbit/s guess


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
