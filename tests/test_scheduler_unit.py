"""The device worker's deadline-first schedule: order, fairness, late binding, cancelled streams leave.

Unit tier. The queue is tested with a fake clock; the worker with a recording test-double
backend (the scheduling, not Whisper, is under test here; real-model steps are covered by
test_model_pool.py and the live transcription tests).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import List

import numpy as np

from whisperlivekit.asr.types import TranscribeRequest, TranscribeResult, Word
from whisperlivekit.runtime.device_worker import DeviceWorker, LiveStream
from whisperlivekit.runtime.load import LoadMeter
from whisperlivekit.runtime.schedule import DeadlineQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class Job:
    name: str
    due_at: float
    kind: str = "transcribe"
    bucket: int = 0
    cancelled: bool = False


def test_the_job_whose_audio_waited_longest_goes_first_whatever_the_submission_order():
    queue = DeadlineQueue(FakeClock())
    for name, due in (("late", 103.0), ("oldest", 101.0), ("middle", 102.0)):
        queue.put(Job(name, due))
    assert [queue.take(timeout=0).name for _ in range(3)] == ["oldest", "middle", "late"]
    assert queue.take(timeout=0) is None


def test_live_jobs_go_before_file_steps():
    queue = DeadlineQueue(FakeClock())
    queue.put_file(Job("file", 0.0, kind="file"))
    queue.put(Job("live", 500.0))
    assert [queue.take(timeout=0).name, queue.take(timeout=0).name] == ["live", "file"]


def test_streams_that_all_keep_talking_are_served_in_turn_and_none_waits_longer_than_a_round():
    """One lane, four streams with audio arriving all the time, each step costing 0.3 s: each
    stream is due again from the moment its previous step started (its next audio), so the
    lane serves them in rotation and no stream's audio waits more than one round of the others."""
    clock = FakeClock()
    queue = DeadlineQueue(clock)
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        queue.put(Job(name, clock.now - 1.0 + 0.01 * i))  # all have audio waiting since about 1 s ago
    served: List[str] = []
    waits: List[float] = []
    for _ in range(40):
        job = queue.take(timeout=0)
        served.append(job.name)
        waits.append(clock.now - job.due_at)
        step_started = clock.now
        clock.now += 0.3
        queue.put(Job(job.name, step_started))  # new audio arrived right after the step started
    assert served[:8] == names + names
    assert all(served.count(n) == 10 for n in names), "each stream gets the same number of steps"
    assert max(waits[4:]) <= 4 * 0.3 + 1e-9, f"a stream waited {max(waits):.2f} s, more than one round"


def test_a_batch_takes_the_nearest_deadlines_of_the_first_jobs_window_bucket():
    queue = DeadlineQueue(FakeClock())
    first = Job("first", 1.0, bucket=2)
    for name, due, bucket in (("other-bucket", 1.5, 7), ("near", 2.0, 2), ("far", 9.0, 2), ("nearer", 1.7, 2)):
        queue.put(Job(name, due, bucket=bucket))
    batch = [first]
    queue.take_more(batch, 3)
    assert [j.name for j in batch] == ["first", "nearer", "near"]
    assert [queue.take(timeout=0).name, queue.take(timeout=0).name] == ["other-bucket", "far"]


def test_for_a_backend_that_mixes_windows_a_batch_takes_the_nearest_deadlines_of_any_bucket():
    queue = DeadlineQueue(FakeClock())
    first = Job("first", 1.0, bucket=2)
    for name, due, bucket in (("other-bucket", 1.5, 7), ("near", 2.0, 2), ("far", 9.0, 2), ("file", 0.5, 2)):
        queue.put(Job(name, due, kind="file" if name == "file" else "transcribe", bucket=bucket))
    batch = [first]
    queue.take_more(batch, 3, any_bucket=True)
    assert [j.name for j in batch] == ["first", "other-bucket", "near"]
    assert [queue.take(timeout=0).name, queue.take(timeout=0).name] == ["file", "far"]  # another kind stays


def test_the_worker_batches_several_windows_together_only_for_a_backend_that_mixes_them():
    """The lane is held by one step while three of different window buckets queue: a backend that decodes
    mixed windows as one batch gets them in one call, any other one call per bucket."""
    def batches(mixes: bool) -> List[List[float]]:
        backend = RecordingBackend()
        backend.mixes_windows = mixes
        worker = DeviceWorker("cuda:0", backend, lanes=1, max_batch_size=8, batch_window_ms=50)

        async def scenario():
            backend.gate.clear()
            holder = asyncio.create_task(worker.transcribe(_request(9.0)))
            assert await asyncio.to_thread(backend.entered.wait, 10)
            steps = [asyncio.create_task(worker.transcribe(_request(float(n), samples=int(seconds * 16000))))
                     for n, seconds in ((1, 3.0), (2, 9.0), (3, 15.0))]
            await asyncio.sleep(0.1)
            backend.gate.set()
            await asyncio.gather(holder, *steps)

        try:
            asyncio.run(scenario())
        finally:
            worker.close()
        return backend.seen

    assert batches(mixes=True) == [[9.0], [1.0, 2.0, 3.0]]
    assert batches(mixes=False) == [[9.0], [1.0], [2.0], [3.0]]


def test_a_cancelled_job_leaves_the_queue_at_once_and_never_runs():
    queue = DeadlineQueue(FakeClock())
    gone, kept = Job("gone", 1.0), Job("kept", 2.0)
    queue.put(gone), queue.put(kept)
    gone.cancelled = True
    queue.discard_cancelled()
    assert queue.live_depth() == 1
    assert queue.take(timeout=0) is kept and queue.take(timeout=0) is None


# -- the worker -------------------------------------------------------------------------------


class RecordingBackend:
    """Test double for a Whisper backend: records what each batch held; `gate` holds the lane."""

    name = "recording"
    device = "cpu"
    model_label = "test-double"

    def __init__(self) -> None:
        self.seen: List[List[float]] = []  # per batch: each request's first sample
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def transcribe_batch(self, requests):
        self.entered.set()
        self.gate.wait(30)
        self.seen.append([float(r.audio[0]) for r in requests])
        return [TranscribeResult(words=[Word(0.0, 0.1, f" {len(r.audio)}")], decoded_tokens=3) for r in requests]

    def close(self) -> None:
        pass


def _request(marker: float, samples: int = 1600) -> TranscribeRequest:
    return TranscribeRequest(np.full(samples, marker, np.float32))


def test_the_worker_runs_the_earliest_deadline_first_and_binds_each_step_when_it_runs():
    backend = RecordingBackend()
    worker = DeviceWorker("cpu", backend, lanes=1)
    audio = {"b": 1600}  # stream b's buffer grows while it waits

    async def scenario():
        backend.gate.clear()
        holder = asyncio.create_task(worker.transcribe(_request(9.0)))
        assert await asyncio.to_thread(backend.entered.wait, 10)
        loop_time = worker._clock()
        b = asyncio.create_task(worker.step(lambda: _request(2.0, audio["b"]), due_at=loop_time - 1.0, stream=LiveStream()))
        a = asyncio.create_task(worker.step(lambda: _request(1.0), due_at=loop_time - 5.0, stream=LiveStream()))
        await asyncio.sleep(0.05)
        audio["b"] = 16000  # 1 s more arrived before b's step ran
        backend.gate.set()
        return await asyncio.gather(holder, a, b)

    try:
        _, a, b = asyncio.run(scenario())
    finally:
        worker.close()
    assert backend.seen == [[9.0], [1.0], [2.0]], "the older deadline (a) ran before b although b was submitted first"
    assert b.text == "16000", "b's request was built when its step ran, with the audio that came meanwhile"
    summary = worker.scheduler_status()
    assert summary["decoded_tokens"]["count"] == 3 and summary["schedule_lag_seconds"]["count"] == 3


def test_a_stream_that_goes_away_while_queued_is_dropped_at_once_and_never_built():
    backend = RecordingBackend()
    worker = DeviceWorker("cpu", backend, lanes=1)
    built: List[str] = []

    async def scenario():
        backend.gate.clear()
        holder = asyncio.create_task(worker.transcribe(_request(9.0)))
        assert await asyncio.to_thread(backend.entered.wait, 10)
        gone = asyncio.create_task(worker.step(lambda: built.append("gone") or _request(3.0), due_at=0.0))
        await asyncio.sleep(0.05)
        depth_before = worker.queue_depth()
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        depth_after = worker.queue_depth()
        backend.gate.set()
        await holder
        return depth_before, depth_after

    try:
        before, after = asyncio.run(scenario())
    finally:
        worker.close()
    assert (before, after) == (1, 0)
    assert built == [] and backend.seen == [[9.0]]


def test_a_step_with_nothing_to_transcribe_returns_none_without_touching_the_model():
    backend = RecordingBackend()
    worker = DeviceWorker("cpu", backend, lanes=1)
    try:
        result = asyncio.run(worker.step(lambda: None, due_at=0.0))
    finally:
        worker.close()
    assert result is None and backend.seen == []


def test_steps_taken_early_count_as_load_only_for_the_share_of_a_reference_step():
    clock = FakeClock()
    meter = LoadMeter(lanes=1, window_s=10.0, clock=clock)
    backend = RecordingBackend()
    worker = DeviceWorker("cpu", backend, lanes=1, load=meter)

    async def scenario():
        for new_audio_s in (0.25, None):
            request = _request(1.0)
            request.new_audio_s = new_audio_s
            await worker.step(lambda request=request: request, due_at=0.0)

    try:
        asyncio.run(scenario())
    finally:
        worker.close()
    (_, quarter), (_, full) = list(meter._busy)
    assert abs(quarter - full / 4) < max(0.05 * full, 0.002), (quarter, full)
