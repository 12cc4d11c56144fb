"""One model per device, shared by its connections; inference off the event loop; batching."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import httpx
import numpy as np
import pytest

from conftest import in_process_server, run
from helpers import open_session
from whisperlivekit.app import create_app
from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
from whisperlivekit.weights.resolve import resolve_model
from whisperlivekit.asr.types import TranscribeRequest
from whisperlivekit.client import pcm_to_float
from whisperlivekit.config import Settings
from whisperlivekit.runtime.device_worker import DeviceWorker
from whisperlivekit.runtime.model_pool import ModelPool


@pytest.fixture(scope="module")
def backend():
    return FasterWhisperBackend(resolve_model("tiny.en"), device="cpu", cpu_threads=1, lanes=2)


async def until(check, timeout_s: float = 30.0) -> bool:
    """Poll `check` on the event loop until it holds (True) or the time is up (False)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _engines_of_two_open_connections(app) -> list:
    """Open two connections to a real server running `app`; return their engines."""
    services = app.state.services
    with in_process_server(app) as base:
        async def scenario():
            a, _, _ = await open_session(base.replace("http", "ws") + "/asr")
            b, _, _ = await open_session(base.replace("http", "ws") + "/asr")
            engines = list(services.active_engines)
            await a.close(), await b.close()
            return engines

        return run(scenario())


def test_two_connections_on_one_device_share_one_model_object():
    engines = _engines_of_two_open_connections(create_app(Settings(pcm_input=True)))
    assert len(engines) == 2
    assert engines[0] is not engines[1]
    assert engines[0].worker is engines[1].worker
    assert engines[0].worker.backend is engines[1].worker.backend
    assert engines[0].policy is not engines[1].policy


def test_two_simulated_devices_get_distinct_model_objects_and_a_device_loads_once():
    loads = []

    def factory(device: str, lanes: int):
        loads.append(device)
        return FasterWhisperBackend(resolve_model("tiny.en"), device="cpu", cpu_threads=1)

    pool = ModelPool(Settings(), backend_factory=factory)
    try:
        threads = [threading.Thread(target=pool.worker_sync, args=(d,)) for d in ("sim:0", "sim:0", "sim:1", "sim:0")]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(loads) == ["sim:0", "sim:1"]  # concurrent first connections wait for one load
        assert pool.worker_sync("sim:0").backend is not pool.worker_sync("sim:1").backend
        assert pool.worker_sync("sim:0") is pool.worker_sync("sim:0")
    finally:
        pool.close()


class GatedBackend:
    """A real backend whose calls wait on an event: holds the device worker busy on demand."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.device, self.model_label = inner, inner.name, inner.device, inner.model_label
        self.entered, self.release = threading.Event(), threading.Event()

    def transcribe_batch(self, requests):
        self.entered.set()
        self.release.wait(timeout=60)
        return self.inner.transcribe_batch(requests)

    def close(self) -> None:
        self.release.set()


def test_event_loop_keeps_serving_while_inference_is_held_in_the_device_worker(backend, speech_pcm):
    gated = GatedBackend(backend)
    app = create_app(Settings(pcm_input=True, max_cpu_connections=4), backend_factory=lambda device, lanes: gated)
    pcm, _ = speech_pcm("harvard")
    with in_process_server(app) as base:
        ws_url = base.replace("http", "ws") + "/asr"

        async def scenario():
            busy, _, _ = await open_session(ws_url)
            await busy.send(pcm[: 2 * 16000 * 3])
            assert await asyncio.to_thread(gated.entered.wait, 30), "inference never started"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                health = await client.get("/health")
                status = await client.get("/gpu-status")
            newcomer, config, _ = await open_session(ws_url, timeout=10)
            gated.release.set()
            await busy.close(), await newcomer.close()
            return health.status_code, status.json(), config

        health, status, config = run(scenario())
    assert health == 200 and status["cpu"]["active_connections"] == 1
    assert config["type"] == "config"


def test_batched_inference_equals_unbatched_and_never_mixes_streams(backend, speech_pcm):
    clips = [pcm_to_float(speech_pcm(name)[0]) for name in ("harvard", "arctic_a0007", "arctic_a0009", "pyannote")]
    requests = [TranscribeRequest(clip[16000 * 6 : 16000 * 9] if len(clip) > 16000 * 9 else clip[: 16000 * 3]) for clip in clips]
    alone = [backend.transcribe_batch([r])[0] for r in requests]
    assert len({a.text for a in alone}) == 4, "distinct audio per stream"
    worker = DeviceWorker("cpu", backend, lanes=1, max_batch_size=4, batch_window_ms=500)

    async def concurrently():
        return await asyncio.gather(*(worker.transcribe(r) for r in requests))

    together = asyncio.run(concurrently())
    assert list(worker.batch_sizes) == [4], "the four requests should have run as one batch"
    for one, batched in zip(alone, together):
        assert batched.text == one.text  # identical transcripts, each stream its own
        assert [w.text for w in batched.words] == [w.text for w in one.words]
        # word times come from cross-attention alignment; batched kernels round slightly differently and can
        # move a boundary by a frame or two (20 ms each): measured up to 40 ms
        for a, b in zip(batched.words, one.words):
            assert abs(a.start - b.start) <= 0.05 and abs(a.end - b.end) <= 0.05


def test_streams_with_different_committed_prompts_batch_together_with_their_own_results(backend, speech_pcm):
    """A GPU batches streams whose committed text differs: CTranslate2 needs <|startoftranscript|> at one
    position per batch, so rows are grouped by prompt length, never trimmed to fit each other."""
    clip = pcm_to_float(speech_pcm("harvard")[0])
    requests = [
        TranscribeRequest(clip[16000 * 3 : 16000 * 6], prompt="The birch canoe slid on the smooth planks."),
        TranscribeRequest(clip[16000 * 3 : 16000 * 6], prompt=""),
        TranscribeRequest(clip[16000 * 6 : 16000 * 9], prompt="Glue the sheet"),
    ]
    alone = [backend.transcribe_batch([r])[0] for r in requests]
    together = backend.transcribe_batch(requests)  # raised ValueError before rows were grouped by prompt length
    assert [r.text for r in together] == [r.text for r in alone]


def test_connection_state_is_freed_at_close(speech_pcm):
    app = create_app(Settings(pcm_input=True))
    services = app.state.services
    pcm, _ = speech_pcm("arctic_a0009")
    refs = []
    with in_process_server(app) as base:
        async def scenario():
            ws, _, _ = await open_session(base.replace("http", "ws") + "/asr")
            await ws.send(pcm)
            assert await until(lambda: any(e.vad is not None and e.vad.samples_seen for e in services.active_engines))
            engine = next(iter(services.active_engines))
            refs.extend([weakref.ref(engine), weakref.ref(engine.policy), weakref.ref(engine.vad)])
            del engine
            await ws.send(b"")
            async for message in ws:
                if "ready_to_stop" in message:
                    break
            await ws.close()

        run(scenario())
        for _ in range(50):
            gc.collect()
            if all(r() is None for r in refs):
                break
            import time

            time.sleep(0.1)
    assert all(r() is None for r in refs), [type(r()).__name__ for r in refs if r() is not None]


def test_model_per_connection_baseline_gives_each_connection_its_own_model():
    engines = _engines_of_two_open_connections(create_app(Settings(pcm_input=True, model_per_connection=True, preload=False)))
    assert engines[0].worker is not engines[1].worker
    assert engines[0].worker.backend is not engines[1].worker.backend


# -- the device worker's jobs ---------------------------------------------------------------------


class HeldDiarizer:
    """A diarizer whose `process` waits for the test: it records what ran and when it finished."""

    latency_s = 0.0

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.ran, self.finished = [], []

    def new_stream(self):
        return {"id": len(self.ran)}

    def process(self, state, audio):
        self.ran.append(state["id"])
        self.entered.set()
        self.release.wait(timeout=60)
        self.finished.append(state["id"])
        return []

    def close(self) -> None:
        self.release.set()


class NoBackend:
    name, device, model_label = "none", "cpu", "none"

    def transcribe_batch(self, requests):
        raise AssertionError("no transcription in this test")

    def close(self) -> None:
        pass


def test_cancelling_a_connection_waits_for_its_running_job_and_skips_its_queued_one():
    diarizer = HeldDiarizer()
    worker = DeviceWorker("cpu", NoBackend(), lanes=1, diarizer=diarizer)
    audio = np.zeros(1600, np.float32)

    async def scenario():
        running = asyncio.create_task(worker.diarize({"id": "running"}, audio))
        assert await asyncio.to_thread(diarizer.entered.wait, 10)
        queued = asyncio.create_task(worker.diarize({"id": "queued"}, audio))
        await asyncio.sleep(0)  # let it reach the queue
        queued.cancel()
        running.cancel()
        threading.Timer(0.2, diarizer.release.set).start()
        await asyncio.gather(running, queued, return_exceptions=True)
        finished_when_cancel_returned = list(diarizer.finished)
        after = await worker.diarize({"id": "after"}, audio)  # the lane moved past the skipped job
        return finished_when_cancel_returned, after

    try:
        finished, after = asyncio.run(scenario())
    finally:
        worker.close()
    assert finished == ["running"], "the cancelled await returned while its job still ran on the state"
    assert diarizer.ran == ["running", "after"], "a job cancelled while queued must never run"
    assert after == []


def test_vad_jobs_of_many_streams_run_together_and_give_each_its_own_events(backend, speech_pcm):
    """16 connections' 100 ms chunks at once: the VAD lane runs them as shared calls, and each stream gets the
    events it gets alone."""
    from whisperlivekit.audio.vad import SileroVadModel, VadStream

    vad = SileroVadModel()
    worker = DeviceWorker("cpu", GatedBackend(backend), lanes=1, vad_model=vad)  # no step runs: closing leaves `backend`
    speech = pcm_to_float(speech_pcm("harvard")[0])[: 16000 * 4]
    audios = [np.roll(speech, 1600 * n) if n % 2 else np.zeros_like(speech) for n in range(16)]
    alone = []
    for audio in audios:
        stream = VadStream()
        alone.append([e for start in range(0, len(audio), 1600) for e in stream.process(vad, audio[start : start + 1600])])

    async def connection(audio):
        stream, events = VadStream(), []
        for start in range(0, len(audio), 1600):
            events += await worker.vad(stream, audio[start : start + 1600])
        return events

    async def scenario():
        return await asyncio.gather(*(connection(audio) for audio in audios))

    calls, windows = vad.calls, vad.windows
    try:
        together = asyncio.run(scenario())
    finally:
        worker.close()
    assert together == alone and any(alone)
    assert (vad.windows - windows) / (vad.calls - calls) > 2, "the lane ran the streams' windows one by one"


def test_vad_never_waits_behind_a_transcription_step(backend, speech_pcm):
    from whisperlivekit.audio.vad import SileroVadModel, VadStream

    gated = GatedBackend(backend)
    worker = DeviceWorker("cpu", gated, lanes=1, vad_model=SileroVadModel())
    speech = pcm_to_float(speech_pcm("harvard")[0])

    async def scenario():
        step = asyncio.create_task(worker.transcribe(TranscribeRequest(speech[: 16000 * 2])))
        assert await asyncio.to_thread(gated.entered.wait, 30)
        stream = VadStream()
        events = []
        for start in range(0, 16000 * 3, 1600):  # 3 s in 100 ms chunks while the only lane is held
            events += await worker.vad(stream, speech[start : start + 1600])
        held_throughout = not gated.release.is_set()
        gated.release.set()
        await step
        return events, held_throughout, stream

    try:
        events, held_throughout, stream = asyncio.run(scenario())
    finally:
        worker.close()
    assert held_throughout
    assert events and events[0][0] == "start" and stream.speech_seen, "VAD heard the speech while Whisper was held"
