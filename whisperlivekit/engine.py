"""One connection's pipeline: decode → VAD → streaming ASR policy → lines.

Cheap to build (no model loading: inference goes to the device's shared
`DeviceWorker`), holds no global state, and frees everything in `close()`.
Results are coalesced: a slow client gets the newest snapshot, never a backlog.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import AsyncIterator, List, Optional, Tuple

import numpy as np

from whisperlivekit.asr.policies import make_policy
from whisperlivekit.audio.decode import SAMPLE_RATE, make_decoder
from whisperlivekit.audio.vad import VadStream
from whisperlivekit.config import Settings
from whisperlivekit.errors import DecodeError, WhisperLiveKitError
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.protocol import build_lines, update_message
from whisperlivekit.runtime.device_worker import DeviceWorker

logger = logging.getLogger(__name__)

PREROLL_S = 0.4


class TranscriptionEngine:
    def __init__(
        self, settings: Settings, slot: Slot, worker: DeviceWorker, vad_model=None, language: Optional[str] = None, diarizer=None,
    ) -> None:
        self.settings = settings
        self.slot = slot
        self.worker = worker
        self.log = logging.LoggerAdapter(logger, {"connection_id": slot.connection_id, "device": slot.label})
        self.decoder = make_decoder(settings.pcm_input, label=f"[{slot.connection_id[:8]}]")
        self.policy = make_policy(settings, language)
        self.vad_model = vad_model if settings.vac else None
        self.vad = VadStream(threshold=settings.vad_threshold) if self.vad_model is not None else None
        self.received_samples = 0
        self.fed_bytes = 0
        self.segment_end_pending = False
        self.input_done = False
        self.error: Optional[str] = None
        self.finished = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._latest: Optional[dict] = None
        self._last_sent: Optional[dict] = None
        self._tasks: List[asyncio.Task] = []
        self._arrivals: List[Tuple[float, float]] = []  # (stream time, monotonic) for lag measurement
        self.commit_lags_s: List[float] = []
        self.compute_s = 0.0
        self.diarizer = diarizer
        self.diarization = diarizer.new_stream() if diarizer is not None else None
        self._diar_queue: "asyncio.Queue[Optional[np.ndarray]]" = asyncio.Queue()
        self._diar_done = diarizer is None
        self._vad_call: Optional[asyncio.Future] = None  # the VAD thread, awaited by close()

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self.decoder.start()
        self._tasks = [asyncio.create_task(self._read_audio()), asyncio.create_task(self._process())]
        if self.diarizer is not None:
            self._diar_task = asyncio.create_task(self._diarize())
            self._tasks.append(self._diar_task)

    async def feed(self, data: bytes) -> None:
        if self.error:
            raise DecodeError(self.error)
        self.fed_bytes += len(data)
        await self.decoder.feed(data)

    async def end_of_audio(self) -> None:
        await self.decoder.finish()

    async def close(self) -> None:
        if self.vad is not None:
            self.vad.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._vad_call is not None:
            # Cancelling the task does not stop its thread: nothing of this connection may run after close().
            await asyncio.gather(self._vad_call, return_exceptions=True)
            self._vad_call = None
        await self.decoder.close()
        self._tasks = []

    # -- results out -----------------------------------------------------------------
    async def updates(self) -> AsyncIterator[dict]:
        """Snapshots as they change; ends after the final one (or raises on a decode error)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            latest = self._latest
            if latest is not None and latest != self._last_sent:
                self._last_sent = latest
                yield latest
            if self.error:
                raise DecodeError(self.error)
            if self.finished:
                return

    def _publish(self) -> None:
        self._latest = self.snapshot()
        self._changed.set()

    # -- audio in --------------------------------------------------------------------
    @property
    def received_s(self) -> float:
        return self.received_samples / SAMPLE_RATE

    @property
    def backlog_s(self) -> float:
        """Audio received from the client but not yet transcribed (decoder queue + policy buffer).

        Container input is decoded by ffmpeg, whose pipe pushes back on a fast client; raw PCM is
        queued here, so its not-yet-decoded part is counted from the bytes fed.
        """
        queued_s = max(0.0, self.fed_bytes / (2 * SAMPLE_RATE) - self.received_s) if self.settings.pcm_input else 0.0
        return queued_s + (self.policy.unprocessed_s if self._speech_pending() else 0.0)

    @property
    def transcribed_s(self) -> float:
        return min(self.received_s, self.policy.transcribed_until_s)

    async def _read_audio(self) -> None:
        try:
            async for chunk in self.decoder.chunks():
                await self._on_audio(chunk)
        except DecodeError as exc:
            self.error = str(exc)
            self.log.warning("decode error: %s", exc)
        except WhisperLiveKitError as exc:
            self.error = str(exc)
        finally:
            self.input_done = True
            self._diar_queue.put_nowait(None)
            self._wake.set()
            self._changed.set()

    async def _on_audio(self, chunk: np.ndarray) -> None:
        self.received_samples += len(chunk)
        self._arrivals.append((self.received_s, time.monotonic()))
        self.policy.append_audio(chunk)
        if self.diarizer is not None:
            self._diar_queue.put_nowait(chunk)
        if self.vad is not None:
            self._vad_call = asyncio.ensure_future(asyncio.to_thread(self.vad.process, self.vad_model, chunk))
            events = await asyncio.shield(self._vad_call)
            for kind, _ in events:
                if kind == "end":
                    self.segment_end_pending = True
            if not self.vad.in_speech and not self.segment_end_pending and not self.policy.tentative:
                self._drop_silence()
        self._wake.set()

    def _drop_silence(self) -> None:
        """While nobody speaks, keep only a short pre-roll: silence is never sent to Whisper."""
        self.policy.drop_audio_before(self.received_s - PREROLL_S)
        self._publish()

    # -- the transcription loop ------------------------------------------------------
    def _speech_pending(self) -> bool:
        return self.vad is None or self.vad.in_speech or self.segment_end_pending

    async def _process(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.policy.unprocessed_s >= self.settings.min_chunk_size_s and self._speech_pending():
                    await self._step()
                    if self.segment_end_pending:
                        break
                if self.segment_end_pending:
                    self.segment_end_pending = False
                    if self.policy.unprocessed_s > 0.05:
                        await self._step()
                    finished = self.policy.finish()
                    self.log.debug("segment end: committed %r", "".join(w.text for w in finished))
                    self._commit(finished)
                    self._publish()
                if self.input_done:
                    break
            if not self.error:
                if self.policy.unprocessed_s > 0.05 and self._has_speech():
                    await self._step()
                self._commit(self.policy.finish())
                if self.diarizer is not None:
                    await self._diar_task
        except WhisperLiveKitError as exc:
            self.error = str(exc)
            self.log.error("transcription failed: %s", exc)
        finally:
            self.finished = True
            self._publish()

    async def _diarize(self) -> None:
        """Feed the connection's diarization state on the device worker, ~0.5 s at a time.

        At the end, a little silence lets the diarizer settle the last labels.
        """
        pending: List[np.ndarray] = []
        ended = False
        while not ended:
            chunk = await self._diar_queue.get()
            if chunk is None:
                ended = True
                pending.append(np.zeros(int((getattr(self.diarizer, "latency_s", 1.0) + 0.2) * SAMPLE_RATE), np.float32))
            else:
                pending.append(chunk)
            while not self._diar_queue.empty() and not ended:
                nxt = self._diar_queue.get_nowait()
                if nxt is None:
                    self._diar_queue.put_nowait(None)
                    break
                pending.append(nxt)
            if ended or sum(len(c) for c in pending) >= SAMPLE_RATE // 2:
                audio, pending = np.concatenate(pending), []
                await self.worker.call(self.diarizer.process, self.diarization, audio)
                self._publish()
        self._diar_done = True

    def _has_speech(self) -> bool:
        return self.vad is None or self.vad.speech_seen

    async def _step(self) -> None:
        request = self.policy.next_request()
        started = time.perf_counter()
        result = await self.worker.transcribe(request)
        self.compute_s += time.perf_counter() - started
        committed = self.policy.apply(result)
        self.log.debug(
            "step %.2f s audio at %.2f s in %.0f ms%s: %r → committed %r", len(request.audio) / SAMPLE_RATE,
            self.policy.offset_s, 1000 * (time.perf_counter() - started),
            " (degenerate)" if result.degenerate else "", result.text[-60:], "".join(w.text for w in committed),
        )
        self._commit(committed)
        self._publish()

    def _commit(self, words) -> None:
        now = time.monotonic()
        for word in words:
            i = bisect.bisect_left(self._arrivals, (word.end, 0.0))
            if i < len(self._arrivals):
                self.commit_lags_s.append(now - self._arrivals[i][1])
        del self._arrivals[: max(0, bisect.bisect_left(self._arrivals, (self.policy.offset_s - 5.0, 0.0)))]

    # -- snapshot --------------------------------------------------------------------
    def snapshot(self) -> dict:
        words = self.policy.committed
        buffer_diarization = ""
        diarization_lag_s = 0.0
        if self.diarization is None:
            speakers = [1] * len(words)
        else:
            from whisperlivekit.diarization import assign_speakers

            settled_s = float("inf") if self._diar_done else self.diarization.processed_s
            labelled = [w for w in words if w.end <= settled_s]
            buffer_diarization = "".join(w.text for w in words[len(labelled):]).strip()
            words = labelled
            speakers = assign_speakers(words, list(self.diarization.segments))
            diarization_lag_s = 0.0 if self._diar_done else self.received_s - self.diarization.processed_s
        silent_since = None
        if self.vad is not None and not self.vad.in_speech and not self.policy.tentative:
            silent_since = words[-1].end if words else 0.0
        lines = build_lines(words, speakers, self.settings.pause_segmentation_s, silent_since, float(int(self.received_s)))
        status = "active_transcription"
        if self.error:
            status = "error"
        elif not words and not self.policy.tentative and self.received_s >= self.settings.no_audio_timeout_s and (
            self.vad is None or not self.vad.speech_seen
        ):
            status = "no_audio_detected"
        transcription_lag_s = 0.0
        if not self.finished and self._speech_pending():
            transcription_lag_s = self.received_s - self.policy.transcribed_until_s
        return update_message(
            status=status,
            lines=lines,
            buffer_transcription="".join(w.text for w in self.policy.tentative).strip(),
            buffer_diarization=buffer_diarization,
            remaining_time_transcription=transcription_lag_s,
            remaining_time_diarization=diarization_lag_s,
            error=self.error,
        )
