"""One connection's pipeline: decode → VAD → streaming ASR policy (→ diarization) → updates.

Wiring only. Every model job (transcription, VAD, diarization) goes to the
device's `DeviceWorker`; the update message is built by `protocol.py`, commit
lags are measured by `metrics.CommitLagMeter`, and diarization pieces come from
`diarization.feed.DiarizationFeed`. Cheap to build (no model loading), holds no
global state, and frees everything in `close()`, which returns only once no
job of this connection is still running on its state.
Results are coalesced: a slow client gets the newest snapshot, never a backlog.
Adapters for other protocols read typed events instead (`events()`, see `events.py`), choose
the connection's input format, and may `finalize()` (commit everything heard, keep listening).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, List, Optional

import numpy as np

from whisperlivekit.asr.policies import make_policy
from whisperlivekit.asr.types import StreamingPolicy
from whisperlivekit.audio.decode import SAMPLE_RATE, InputFormat, decoder_for
from whisperlivekit.audio.vad import VadStream
from whisperlivekit.config import Settings
from whisperlivekit.diarization.feed import DiarizationFeed
from whisperlivekit.errors import DecodeError, WhisperLiveKitError
from whisperlivekit.events import (
    BY_END, BY_FINALIZE, BY_VAD, Committed, EngineEvent, Final, Partial, SpeechStarted, SpeechStopped,
)
from whisperlivekit.gpu.manager import Slot
from whisperlivekit.limits import SentAudioMeter
from whisperlivekit.metrics import CommitLagMeter
from whisperlivekit.protocol import LineCache, PipelineView, transcript_update
from whisperlivekit.runtime.device_worker import DeviceWorker, LiveStream

logger = logging.getLogger(__name__)

PREROLL_S = 0.4
# Below this device load (load.py: demand at 1 s steps, per lane) streams step every `--fast-step`:
# a 0.4 s step costs about as much as a 1 s one, so fast steps spend up to ~2x the compute.
FAST_STEP_MAX_LOAD = 0.4
CATCH_UP_TIMEOUT_S = 2.0  # `finalize()` waits at most this long for the decoder to deliver what was sent


def oldest_uncommitted_s(policy: StreamingPolicy) -> float:
    """Stream time of the oldest audio whose words are not committed yet: a step's deadline runs from its
    arrival. Clients wait for commits, so under load the stream whose words have waited longest (an unsure
    word held for a second vote) steps before one that committed all it heard: the commit-lag tail, which
    ordering by untranscribed audio left to chance, is served first (measured: docs/benchmarks.md)."""
    committed_end_s = policy.committed[-1].end if policy.committed else 0.0
    return min(policy.transcribed_until_s, max(policy.offset_s, committed_end_s))


class TranscriptionEngine:
    def __init__(self, settings: Settings, slot: Slot, worker: DeviceWorker, language: Optional[str] = None,
                 input_format: Optional[InputFormat] = None) -> None:
        self.settings = settings
        self.slot = slot
        self.worker = worker
        self.log = logging.LoggerAdapter(logger, {"connection_id": slot.connection_id, "device": slot.label})
        self.input_format = input_format or InputFormat(pcm=settings.pcm_input)  # `--pcm-input`: the /asr default
        self.decoder = decoder_for(self.input_format, label=f"[{slot.connection_id[:8]}]")
        self.policy = make_policy(settings, language)
        self.detects_language = language is None  # `auto`: updates name the language once detected
        self.vad = VadStream(threshold=settings.vad_threshold) if settings.vac else None
        self.received_samples = 0
        self.sent_audio = SentAudioMeter(self.input_format.bytes_per_s)  # what the guards count
        self.segment_end_pending = False
        self._segment_end_s: Optional[float] = None  # where the VAD heard the pending segment's speech end
        self.input_done = False
        self.failure: Optional[WhisperLiveKitError] = None  # typed, so api/errors.py closes with the right code
        self.finished = False
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._latest: Optional[dict] = None
        self._line_cache = LineCache()  # lines' JSON kept between updates: long sessions stay cheap
        self._last_sent: Optional[dict] = None
        self._tasks: List[asyncio.Task] = []
        self.commit_lag = CommitLagMeter()
        self.compute_s = 0.0
        self._live = LiveStream()  # this stream's record in the worker's deadline-first schedule
        self.diarization = worker.new_diarization_state() if settings.diarization else None
        self._diar_feed = DiarizationFeed(getattr(worker.diarizer, "latency_s", 1.0)) if self.diarization is not None else None
        self._diar_done = self.diarization is None
        self._events: Optional[asyncio.Queue] = None  # created by `events()`: /asr never pays for it
        self._last_partial: tuple = ()
        self._finalize_waiters: List[asyncio.Event] = []

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self.decoder.start()
        self._tasks = [asyncio.create_task(self._read_audio()), asyncio.create_task(self._process())]
        if self._diar_feed is not None:
            self._diar_task = asyncio.create_task(self._diarize())
            self._tasks.append(self._diar_task)

    async def feed(self, data: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self.sent_audio.fed(len(data))
        await self.decoder.feed(data)

    async def end_of_audio(self) -> None:
        await self.decoder.finish()

    async def close(self) -> None:
        """Cancel this connection's work; returns after its running device jobs have finished."""
        if self.vad is not None:
            self.vad.stop()  # a VAD job of this connection already running ends at its next window
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.decoder.close()
        self._tasks = []

    @property
    def commit_lags_s(self) -> List[float]:
        return self.commit_lag.lags_s

    @property
    def error(self) -> Optional[str]:
        """The failure as the client is told it (the update's `error` field)."""
        return str(self.failure) if self.failure is not None else None

    # -- results out -----------------------------------------------------------------
    async def updates(self) -> AsyncIterator[dict]:
        """Snapshots as they change; ends after the final one (or raises the pipeline's typed failure)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            latest = self._latest
            if latest is not None and latest != self._last_sent:
                self._last_sent = latest
                yield latest
            if self.failure is not None:
                raise self.failure
            if self.finished:
                return

    def events(self) -> AsyncIterator[EngineEvent]:
        """Typed events from now on (call before feeding audio); ends after `Final`, or raises the
        pipeline's typed failure. One reader per engine."""
        if self._events is None:
            self._events = asyncio.Queue()
        return self._read_events(self._events)

    async def _read_events(self, queue: asyncio.Queue) -> AsyncIterator[EngineEvent]:
        while True:
            event = await queue.get()
            if event is None:
                if self.failure is not None:
                    raise self.failure
                return
            yield event

    def _emit(self, event: Optional[EngineEvent]) -> None:
        if self._events is not None:
            self._events.put_nowait(event)

    def _emit_partial(self) -> None:
        tentative = tuple(self.policy.tentative)
        if tentative != self._last_partial:
            self._last_partial = tentative
            self._emit(Partial(tentative))

    def lengthen_endpoint_silence(self, silence_s: float) -> None:
        """Wait for `silence_s` of silence (not the VAD's shorter default) before a segment ends;
        call before feeding audio. Never shortens it: shorter cuts would cost accuracy."""
        if self.vad is not None:
            self.vad.min_silence_s = max(self.vad.min_silence_s, silence_s)

    async def finalize(self) -> None:
        """Commit everything the client has sent so far (a segment end) and keep listening.

        Waits for the decoder to deliver the audio already fed, then for the commit; the words
        come out as `Committed(closed_by=BY_FINALIZE)`. Returns at once after the stream ended.
        """
        if self.input_done or self.finished:
            return
        await self._catch_up()
        if self.input_done or self.finished:
            return
        done = asyncio.Event()
        self._finalize_waiters.append(done)
        self.segment_end_pending = True
        self._wake.set()
        await done.wait()

    async def _catch_up(self) -> None:
        """Until the audio fed so far is decoded: known exactly for PCM; for a container, until
        the decoder has been quiet for a moment (bounded by CATCH_UP_TIMEOUT_S either way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_TIMEOUT_S
        bytes_per_s = self.input_format.bytes_per_s
        last, quiet_since = self.received_samples, loop.time()
        while loop.time() < deadline and not self.input_done:
            if bytes_per_s is not None:
                if self.received_s >= self.sent_audio.fed_bytes / bytes_per_s - 0.02:  # a resampler may keep a few ms
                    return
            elif self.received_samples == last:
                if loop.time() - quiet_since >= 0.25:
                    return
            else:
                last, quiet_since = self.received_samples, loop.time()
            await asyncio.sleep(0.02)

    def _publish(self) -> None:
        self._latest = self.snapshot()
        self._changed.set()

    def snapshot(self) -> dict:
        view = PipelineView(
            committed=self.policy.committed,
            tentative=self.policy.tentative,
            received_s=self.received_s,
            transcribed_until_s=self.policy.transcribed_until_s,
            speech_pending=self._speech_pending(),
            vad_silent=self.vad is not None and not self.vad.in_speech and not self.policy.tentative,
            vad_heard_speech=self.vad is not None and self.vad.speech_seen,
            finished=self.finished,
            error=self.error,
            diarization=self.diarization,
            diarization_done=self._diar_done,
            detected_language=self.policy.language if self.detects_language else None,
        )
        return transcript_update(view, self.settings.pause_segmentation_s, self.settings.no_audio_timeout_s,
                                 self._line_cache)

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
        passthrough = self.input_format.passthrough
        queued_s = max(0.0, self.sent_audio.fed_bytes / (2 * SAMPLE_RATE) - self.received_s) if passthrough else 0.0
        return queued_s + (self.policy.unprocessed_s if self._speech_pending() else 0.0)

    @property
    def transcribed_s(self) -> float:
        return min(self.received_s, self.policy.transcribed_until_s)

    async def _read_audio(self) -> None:
        try:
            async for chunk in self.decoder.chunks():
                await self._on_audio(chunk)
        except DecodeError as exc:
            self.failure = exc
            self.log.warning("decode error: %s", exc)
        except WhisperLiveKitError as exc:
            self.failure = exc
        finally:
            self.input_done = True
            if self._diar_feed is not None:
                self._diar_feed.end()
            self._wake.set()
            self._changed.set()

    async def _on_audio(self, chunk: np.ndarray) -> None:
        self.received_samples += len(chunk)
        self.sent_audio.decoded(len(chunk) / SAMPLE_RATE)
        self.commit_lag.audio_arrived(self.received_s)
        self.policy.append_audio(chunk)
        if self._diar_feed is not None:
            self._diar_feed.push(chunk)
        if self.vad is not None:
            for kind, at_s in await self.worker.vad(self.vad, chunk):
                if kind == "end":
                    self.segment_end_pending = True
                    self._segment_end_s = at_s
                    self._emit(SpeechStopped(at_s))
                else:
                    self._emit(SpeechStarted(at_s))
            if not self.vad.in_speech and not self.segment_end_pending and not self.policy.tentative:
                self._drop_silence()
        self._wake.set()

    def _drop_silence(self) -> None:
        """While nobody speaks, keep only a short pre-roll: silence is never sent to Whisper."""
        self.policy.drop_audio_before(self.received_s - PREROLL_S)
        self._publish()

    # -- the transcription loop ------------------------------------------------------
    def _step_s(self) -> float:
        """New audio a step waits for: `--fast-step` while the device has spare capacity (latency),
        `--min-chunk-size` once it is loaded (capacity). Either way a step that waited in the worker's
        queue covers all the audio that came meanwhile."""
        fast, full = self.settings.fast_step_s, self.settings.min_chunk_size_s
        if 0 < fast < full and self.worker.realtime_load() < FAST_STEP_MAX_LOAD:
            return fast
        return full

    def _speech_pending(self) -> bool:
        return self.vad is None or self.vad.in_speech or self.segment_end_pending

    def _has_speech(self) -> bool:
        return self.vad is None or self.vad.speech_seen

    async def _process(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.policy.unprocessed_s >= self._step_s() and self._speech_pending():
                    await self._step()
                    if self.segment_end_pending:
                        break
                if self.segment_end_pending:
                    self.segment_end_pending = False
                    waiters, self._finalize_waiters = self._finalize_waiters, []
                    # a Finalize in silence: the buffer holds only pre-roll, nothing to transcribe
                    only_preroll = self.vad is not None and not self.vad.in_speech and not self.policy.tentative
                    # a VAD end after the steps heard the speech out: the rest is silence (a Finalize hears it all)
                    silence_left = not waiters and self._segment_end_s is not None and \
                        self.policy.heard_speech_end(self._segment_end_s)
                    if self.policy.unprocessed_s > 0.05 and not (waiters and only_preroll) and not silence_left:
                        await self._step()
                    # a VAD end: a late last step may have heard the next utterance begin, which is not this segment's
                    finished = self.policy.finish(None if waiters else self._segment_end_s)
                    self._segment_end_s = None
                    self.log.debug("segment end: committed %r", "".join(w.text for w in finished))
                    self._commit(finished, BY_FINALIZE if waiters else BY_VAD)
                    self._publish()
                    for done in waiters:
                        done.set()
                if self.input_done:
                    break
            if self.failure is None:
                # only audio that may hold speech: after VAD has closed the last segment, what is left
                # is its pre-roll of silence, on which Whisper invents words ("You")
                if self.policy.unprocessed_s > 0.05 and self._has_speech() and self._speech_pending():
                    await self._step()
                self._commit(self.policy.finish(), BY_END)
                if self._diar_feed is not None:
                    await self._diar_task
        except WhisperLiveKitError as exc:
            self.failure = exc
            self.log.error("transcription failed: %s", exc)
        finally:
            self.finished = True
            self._publish()
            for done in self._finalize_waiters:
                done.set()
            self._finalize_waiters = []
            if self.failure is None:
                self._emit(Final(self.received_s))
            self._emit(None)

    async def _diarize(self) -> None:
        """Feed the connection's diarization state on the device worker, piece by piece."""
        assert self._diar_feed is not None
        async for piece in self._diar_feed.pieces():
            await self.worker.diarize(self.diarization, piece)
            self._publish()
        self._diar_done = True

    async def _step(self) -> None:
        """One transcription step, run when the device worker's deadline-first order reaches it;
        the request is built then, so it covers all the audio received meanwhile."""
        built: List = []

        def build():
            new_audio_s = self.policy.unprocessed_s
            request = self.policy.next_request()
            request.new_audio_s = new_audio_s
            built.append(request)
            return request

        started = time.perf_counter()
        due_at = self.commit_lag.arrival_of(oldest_uncommitted_s(self.policy))
        result = await self.worker.step(build, due_at=due_at, stream=self._live, buffer_s=self.policy.buffer_s)
        self.compute_s += time.perf_counter() - started
        if result is None or not built:
            return
        request = built[0]
        committed = self.policy.apply(result)
        self.log.debug(
            "step %.2f s audio at %.2f s in %.0f ms%s: %r → committed %r", len(request.audio) / SAMPLE_RATE,
            self.policy.offset_s, 1000 * (time.perf_counter() - started),
            " (degenerate)" if result.degenerate else "", result.text[-60:], "".join(w.text for w in committed),
        )
        self._commit(committed)
        self._publish()

    def _commit(self, words, closed_by: Optional[str] = None) -> None:
        self.commit_lag.committed([w.end for w in words], self.policy.offset_s)
        if words or closed_by is not None:
            self._emit(Committed(tuple(words), closed_by))
        self._emit_partial()
