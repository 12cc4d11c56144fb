"""One worker per device runs every model job of that device off the event loop.

The worker owns the device's models: the Whisper backend, the diarizer and the
Silero VAD session. Engines submit typed jobs and await them:
`await worker.transcribe(request)`, `await worker.vad(stream, audio)`,
`await worker.diarize(state, audio)`.

Scheduling: live jobs wait in a `DeadlineQueue` (runtime/schedule.py): a free lane
takes the job whose stream's oldest uncommitted audio is oldest (earliest deadline
first). A live step is bound late: the connection hands `step()` a function that builds
its request, and the lane calls it (on the connection's event loop) only when it takes
the job, so the step covers all the audio that arrived while it waited. Lightly
loaded, a stream steps as soon as it has `--min-chunk-size` of new audio; loaded, each
step simply covers more audio, and no stream falls behind the others. On a GPU one lane
batches the nearest-deadline requests of the same encoder-window bucket (of any bucket
where the backend decodes mixed windows together, as torch on a GPU) that arrive
within `batch_window_ms` (up to `max_batch_size`); on a CPU several single-threaded
lanes run side by side, which beats batching there. Diarization runs on the same lanes
(it is device work of the same weight). VAD has a lane of
its own: a 100 ms chunk costs ~0.4 ms, and queued behind a Whisper step it would
wait that step out (~590 ms for 4 s of audio on tiny.en, CPU); on its own lane
the round trip stays ~3 ms with every Whisper lane busy (`scripts/bench_vad_lane.py`),
plus the 10 ms the lane waits so that the streams' windows share ONNX calls.
The VAD session is only ever run from that one lane thread.

Files (`POST /v1/audio/transcriptions`) fill idle capacity: `file_segments()` advances
the backend's long-form loop one step (one 30 s window at most) per job, and those jobs
wait in a queue of their own that a lane reads only when no live job waits. A live step
therefore waits at most for one file window already running, never for a whole file. File
work is not recorded in the load meter: admission measures what live streams demand, and
file work gives way to it.

Cancellation: a job whose awaiting connection is cancelled is skipped if it has
not started; if it is running, the cancelled await waits for it to finish before
re-raising. So once an engine's tasks are cancelled and gathered, no job of that
connection still touches its state (VAD stream, diarization state, decoder state).

The worker records its compute time into a `LoadMeter`: the device's real-time
load, which admission reads to refuse a device whose streams would start to lag.
A step that covers less than `REFERENCE_STEP_S` of new audio counts for that
fraction of its compute (see load.py), so steps taken early on an idle device do not
look like load. `StepStats` (runtime/step_stats.py) keeps the scheduler's histograms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Deque, List, Optional, Protocol, Tuple

import numpy as np

from whisperlivekit.asr.types import (
    FileSegment, FileTranscribeRequest, FileTranscription, TranscribeRequest, TranscribeResult, WhisperBackend,
)
from whisperlivekit.audio import SAMPLE_RATE
from whisperlivekit.errors import DeviceError, NotSupported
from whisperlivekit.runtime.load import REFERENCE_STEP_S, LoadMeter
from whisperlivekit.runtime.schedule import DeadlineQueue, window_bucket
from whisperlivekit.runtime.step_stats import StepStats

logger = logging.getLogger(__name__)

_STOP = object()
VAD_BATCH_MAX = 64  # VAD jobs one lane run takes together (one ONNX call per window index)
# How long the VAD lane waits after a job for others to share its calls: connections send 100 ms chunks at
# their own phases, so without it the lane mostly runs one stream per call. Small against a chunk's 100 ms.
VAD_GATHER_S = 0.01
BUILD_TIMEOUT_S = 5.0  # a lane waits at most this long for a connection's loop to build its request

BuildRequest = Callable[[], Optional[TranscribeRequest]]


@dataclass(eq=False)
class LiveStream:
    """One connection's scheduling record on a worker (kept by the connection, not the worker,
    so an ended stream leaves nothing behind)."""

    last_step_at: Optional[float] = None
    steps: int = 0


class DeviceHealth(Protocol):
    """Told when inference fails in a way that means the device itself is broken."""

    def report_fault(self, device: str, reason: str) -> None: ...


@dataclass(eq=False)
class _Job:
    kind: str  # "transcribe", "diarize", "vad" or "file" (payload: a step to call)
    payload: Any  # for "transcribe": a TranscribeRequest, or a function building it when a lane takes the job
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    audio_s: float = 0.0
    enqueued_at: float = field(default_factory=time.monotonic)
    due_at: float = 0.0  # when the stream's oldest uncommitted audio arrived (monotonic): the deadline order
    bucket: int = 0  # encoder-window bucket (batch mates share it)
    stream: Optional[LiveStream] = None
    started: bool = False  # set by a lane, under the worker's claim lock
    cancelled: bool = False  # set by the awaiting connection, under the same lock


def _distinct_streams(jobs: List[_Job]) -> List[List[_Job]]:
    """`jobs` in order, cut wherever a stream comes again (a batch runs each stream once)."""
    batches: List[List[_Job]] = []
    seen: set = set()
    for job in jobs:
        if not batches or id(job.payload[0]) in seen:
            batches.append([])
            seen = set()
        batches[-1].append(job)
        seen.add(id(job.payload[0]))
    return batches


def _deliver(job: _Job, result: Any = None, error: Optional[BaseException] = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if job.cancelled:  # nobody wants the result: only say the job is over
            job.future.set_result(None)
        elif error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # loop closed: nobody is waiting any more
        pass


async def _until_done(future: asyncio.Future) -> None:
    """Wait for a running job to end, even if the waiting task is cancelled again meanwhile."""
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            continue
    if not future.cancelled():
        future.exception()  # mark retrieved: the result belongs to nobody now


def single_threaded_blas() -> None:
    """Keep numpy's OpenBLAS off its thread pool, process-wide.

    Lanes compute mel spectrograms with numpy while connections spawn ffmpeg.
    OpenBLAS's fork handler shuts its pool down, so a fork landing during a
    pooled matmul in another thread leaves that matmul waiting forever (seen as
    a hang under 32 concurrent connections). The matrices here are small: one
    thread loses nothing.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        logger.warning("threadpoolctl missing: set OPENBLAS_NUM_THREADS=1 to avoid fork-time BLAS hangs")


def _bind_requests(jobs: List[_Job]) -> List[Optional[TranscribeRequest]]:
    """Each job's request; late-bound ones are built now, on their connection's event loop
    (the policy's state belongs to that loop). None where the build failed or timed out,
    or where the stream has nothing left to transcribe."""
    pending: List[Tuple[int, "concurrent.futures.Future[Any]"]] = []
    requests: List[Optional[TranscribeRequest]] = [None] * len(jobs)
    for i, job in enumerate(jobs):
        if not callable(job.payload):
            requests[i] = job.payload
            continue
        done: "concurrent.futures.Future[Any]" = concurrent.futures.Future()

        def build(job: _Job = job, done: "concurrent.futures.Future[Any]" = done) -> None:
            try:
                done.set_result(job.payload())
            except BaseException as exc:  # noqa: BLE001 - reported to the awaiting connection
                done.set_exception(exc)

        try:
            job.loop.call_soon_threadsafe(build)
        except RuntimeError:  # loop closed: nobody is waiting any more
            continue
        pending.append((i, done))
    for i, done in pending:
        try:
            requests[i] = done.result(timeout=BUILD_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            logger.warning("a connection's loop did not build its request within %.0f s: step skipped", BUILD_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            _deliver(jobs[i], error=exc)
            requests[i] = None
    return requests


class DeviceWorker:
    def __init__(
        self,
        device: str,
        backend: WhisperBackend,
        *,
        lanes: int = 1,
        max_batch_size: int = 1,
        batch_window_ms: float = 0.0,
        vad_model: Any = None,
        diarizer: Any = None,
        health: Optional[DeviceHealth] = None,
        load: Optional[LoadMeter] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        single_threaded_blas()
        self.device = device
        self.backend = backend
        self._mixes_windows = bool(getattr(backend, "mixes_windows", False))  # batch mates from any window bucket
        self.vad_model = vad_model
        self.diarizer = diarizer
        self.max_batch_size = max(1, max_batch_size)
        self.batch_window_s = batch_window_ms / 1000.0
        self._health = health
        self._clock = clock
        self.load = load or LoadMeter(max(1, lanes))
        self._queue = DeadlineQueue(clock)  # live jobs by deadline; file steps behind them
        self._vad_queue: "queue.Queue[Any]" = queue.Queue()
        self._claim_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.batches = 0
        self.requests = 0
        self.retries = 0  # degenerate-output retries on the full window (should stay 0 on healthy audio)
        self.loops_cut = 0  # hypotheses that looped past their audio's end, cut instead of retried
        self.batch_sizes: Deque[int] = deque(maxlen=1000)
        self.compute_s_total = 0.0
        self.stats = StepStats()
        self._threads = [
            threading.Thread(target=self._lane, name=f"device-worker-{device}-{i}", daemon=True) for i in range(max(1, lanes))
        ]
        if vad_model is not None:
            self._threads.append(threading.Thread(target=self._vad_lane, name=f"device-worker-{device}-vad", daemon=True))
        for thread in self._threads:
            thread.start()

    # -- jobs, submitted from the event loop -------------------------------------------
    async def transcribe(self, request: TranscribeRequest) -> TranscribeResult:
        """One request, due now (a step built in advance; live streams use `step`)."""
        audio_s = len(request.audio) / SAMPLE_RATE
        return await self._submit("transcribe", request, audio_s=audio_s, bucket=window_bucket(audio_s))

    async def step(self, build: BuildRequest, *, due_at: float, stream: Optional[LiveStream] = None,
                   buffer_s: float = 0.0) -> Optional[TranscribeResult]:
        """A live stream's next step, run in deadline order: `due_at` is when its oldest uncommitted
        audio arrived. `build` is called on this loop when a lane takes the step (so it covers the
        audio that came meanwhile); it may return None (nothing to do). `buffer_s` guesses the
        request's length, for batching by window bucket. Returns None when no request was built."""
        return await self._submit("transcribe", build, audio_s=buffer_s, bucket=window_bucket(buffer_s),
                                  due_at=due_at, stream=stream)

    async def file_segments(self, request: FileTranscribeRequest) -> Tuple[FileTranscription, AsyncIterator[FileSegment]]:
        """A whole file: its language and length now, then its segments as each window is decoded.

        Every step is a low-priority job (see the module docstring). Raises `NotSupported` when
        the backend has no long-form loop."""
        transcribe_file = getattr(self.backend, "transcribe_file", None)
        if transcribe_file is None:
            raise NotSupported(f"the {self.backend.name} backend cannot transcribe files; run the server with --backend faster-whisper")
        info, steps = await self._submit("file", lambda: transcribe_file(request))

        async def segments() -> AsyncIterator[FileSegment]:
            while True:
                segment = await self._submit("file", lambda: next(steps, None))
                if segment is None:
                    return
                yield segment

        return info, segments()

    async def diarize_file(self, audio: np.ndarray, piece_s: float = 2.0) -> list:
        """Speaker segments of a whole file: a fresh diarization state fed `piece_s` at a time, then
        a little silence to settle the last labels; each piece is a low-priority job like a file step."""
        if self.diarizer is None:
            raise NotSupported("diarization is off on this server: run it with --diarization")
        state = self.diarizer.new_stream()
        piece = max(1, int(piece_s * SAMPLE_RATE))
        settle = np.zeros(int((getattr(self.diarizer, "latency_s", 1.0) + 0.2) * SAMPLE_RATE), np.float32)
        for chunk in [audio[i:i + piece] for i in range(0, len(audio), piece)] + [settle]:
            await self._submit("file", lambda chunk=chunk: self.diarizer.process(state, chunk))
        return list(state.segments)

    async def vad(self, stream: Any, audio: np.ndarray) -> List[Tuple[str, float]]:
        """Run one connection's `VadStream` over `audio` on this device's VAD session; its events."""
        if self.vad_model is None:
            raise RuntimeError(f"no VAD model on {self.device}: the worker was built without one")
        return await self._submit("vad", (stream, audio))

    async def diarize(self, state: Any, audio: np.ndarray) -> list:
        """Feed one connection's diarization state with `audio`; the segments it changed."""
        if self.diarizer is None:
            raise RuntimeError(f"no diarizer on {self.device}: the worker was built without one")
        return await self._submit("diarize", (state, audio))

    def new_diarization_state(self) -> Any:
        """Fresh per-connection diarization state (no model work)."""
        if self.diarizer is None:
            raise RuntimeError(f"no diarizer on {self.device}")
        return self.diarizer.new_stream()

    async def _submit(self, kind: str, payload: Any, audio_s: float = 0.0, bucket: int = 0,
                      due_at: Optional[float] = None, stream: Optional[LiveStream] = None) -> Any:
        loop = asyncio.get_running_loop()
        now = self._clock()
        job = _Job(kind, payload, loop.create_future(), loop, audio_s=audio_s, enqueued_at=now,
                   due_at=now if due_at is None else due_at, bucket=bucket, stream=stream)
        if kind == "vad":
            self._vad_queue.put(job)
        elif kind == "file":
            self._queue.put_file(job)
        else:
            self._queue.put(job)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            with self._claim_lock:
                job.cancelled = True
                running = job.started
            if running:  # its state is being used right now: let the job finish first
                await _until_done(job.future)
            else:
                self._queue.discard_cancelled()  # out of the queue at once, not when a lane reaches it
            raise

    def _claim(self, jobs: List[_Job]) -> List[_Job]:
        """The jobs still wanted, now marked started (a cancelled one is dropped)."""
        with self._claim_lock:
            wanted = [job for job in jobs if not job.cancelled]
            for job in wanted:
                job.started = True
        return wanted

    # -- lane threads ----------------------------------------------------------------
    def _collect(self, first: _Job) -> List[_Job]:
        """`first` and the nearest-deadline jobs of its window bucket (any bucket where the backend mixes
        windows) that arrive within the batch window."""
        batch = [first]
        if self.max_batch_size == 1:
            return batch
        deadline = self._clock() + self.batch_window_s
        while True:
            self._queue.take_more(batch, self.max_batch_size, any_bucket=self._mixes_windows)
            left = deadline - self._clock()
            if len(batch) >= self.max_batch_size or left <= 0:
                return batch
            self._queue.wait_for_more(left)

    def _lane(self) -> None:
        while True:
            job = self._queue.take()
            if job is None:
                return
            if job.kind == "file":
                self._run_file_step(job)
            elif job.kind == "diarize":
                self._run_diarize(job)
            else:
                self._run_batch(self._collect(job))

    def _vad_lane(self) -> None:
        """Every VAD job queued when the lane wakes runs together (`SileroVadModel.process_many`: one ONNX call per window
        index, not per stream); a stream's second job waits for the next round, so its windows stay in order."""
        while True:
            jobs = [self._vad_queue.get()]
            gather_until = time.monotonic() + VAD_GATHER_S
            while jobs[-1] is not _STOP and len(jobs) < VAD_BATCH_MAX:
                try:
                    jobs.append(self._vad_queue.get(timeout=max(0.0, gather_until - time.monotonic())))
                except queue.Empty:
                    break
            stopping = jobs[-1] is _STOP
            if stopping:
                jobs.pop()
            for batch in _distinct_streams(jobs):
                self._run_vad(batch)
            if stopping:
                return

    def _run_vad(self, jobs: List[_Job]) -> None:
        wanted = self._claim(jobs)
        if not wanted:
            return
        try:
            results = self.vad_model.process_many([job.payload for job in wanted])
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting connections
            for job in wanted:
                _deliver(job, error=exc)
            return
        for job, events in zip(wanted, results):
            _deliver(job, events)

    def _run_diarize(self, job: _Job) -> None:
        if not self._claim([job]):
            return
        state, audio = job.payload
        started = time.monotonic()
        try:
            result = self.diarizer.process(state, audio)
        except BaseException as exc:  # noqa: BLE001
            self._fault(exc, "diarization")
            _deliver(job, error=exc if isinstance(exc, DeviceError) else DeviceError(f"diarization failed on {self.device}: {exc}"))
            return
        self.load.record(time.monotonic() - started)
        _deliver(job, result)

    def _run_file_step(self, job: _Job) -> None:
        if not self._claim([job]):
            return
        step: Callable[[], Any] = job.payload
        try:
            result = step()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            if isinstance(exc, DeviceError):
                self._fault(exc, "a file")
            _deliver(job, error=exc)
            return
        _deliver(job, result)

    def _note_start(self, batch: List[_Job]) -> None:
        now = self._clock()
        for job in batch:
            self.stats.queue_wait_s.observe(max(0.0, now - job.enqueued_at))
            self.stats.schedule_lag_s.observe(max(0.0, now - job.due_at))
            if job.stream is not None:
                if job.stream.last_step_at is not None:
                    self.stats.step_interval_s.observe(now - job.stream.last_step_at)
                job.stream.last_step_at = now
                job.stream.steps += 1

    def _run_batch(self, batch: List[_Job]) -> None:
        batch = self._claim(batch)
        if not batch:
            return
        self._note_start(batch)
        requests = _bind_requests(batch)
        for job, request in zip(batch, requests):
            if request is None:
                _deliver(job, None)
        batch, requests = [j for j, r in zip(batch, requests) if r is not None], [r for r in requests if r is not None]
        if not batch:
            return
        started = time.monotonic()
        try:
            results = self.backend.transcribe_batch(requests)
        except BaseException as exc:  # noqa: BLE001
            failure = exc if isinstance(exc, DeviceError) else DeviceError(f"inference failed on {self.device}: {exc}")
            self._fault(exc, f"a batch of {len(batch)}")
            for job in batch:
                _deliver(job, error=failure)
            return
        compute_s = time.monotonic() - started
        # A step covering less new audio than the reference step counts for that share of its compute.
        weights = [1.0 if r.new_audio_s is None else min(1.0, r.new_audio_s / REFERENCE_STEP_S) for r in requests]
        self.load.record(compute_s * sum(weights) / len(weights))
        self.stats.batch_size.observe(len(batch))
        for result in results:
            self.stats.decoded_tokens.observe(result.decoded_tokens)
        with self._stats_lock:
            self.batches += 1
            self.requests += len(batch)
            self.retries += sum(1 for r in results if r.retried)
            self.loops_cut += sum(1 for r in results if r.loop_cut)
            self.batch_sizes.append(len(batch))
            self.compute_s_total += compute_s
        for job, result in zip(batch, results):
            _deliver(job, result)

    def _fault(self, exc: BaseException, what: str) -> None:
        logger.error("inference failed on %s for %s: %s", self.device, what, exc, exc_info=exc)
        if isinstance(exc, DeviceError) and self._health is not None:  # typed a device fault by the backend
            self._health.report_fault(self.device, str(exc))

    # -- load and introspection ------------------------------------------------------
    def realtime_load(self) -> float:
        """Compute seconds per wall second over the last window, per lane: ≥ 1.0 means saturated."""
        return self.load.realtime_load()

    def queue_depth(self) -> int:
        return self._queue.live_depth()

    def scheduler_status(self) -> dict:
        """The scheduler's histograms in short (p50/p95/mean/count) and the retry count, for /gpu-status."""
        return {**self.stats.summary(), "degenerate_retries": self.retries, "loops_cut": self.loops_cut}

    def close(self) -> None:
        self._queue.stop()
        self._vad_queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=10)
        self.backend.close()
        if self.diarizer is not None:
            self.diarizer.close()
