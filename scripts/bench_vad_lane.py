"""Why VAD has its own lane on the device worker: what a VAD job costs and waits.

Measures, on tiny.en on the CPU: the compute of VAD on one 100 ms chunk, one
Whisper step (what a VAD job queued behind it would wait), and the round trip of
`await worker.vad(...)` while every transcription lane is kept busy.

    PYTHONPATH=. python scripts/bench_vad_lane.py

Measured on a shared 2-core machine: VAD 0.39 ms median per chunk; a 4 s Whisper step 586 ms
median; `await worker.vad` on its own lane with both Whisper lanes busy 2.8 ms median (28 ms p95), before the
VAD lane waited 10 ms to batch streams (device_worker.VAD_GATHER_S, 2026-12-04): add that much now.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import numpy as np

from whisperlivekit.asr.backends.faster_whisper import FasterWhisperBackend
from whisperlivekit.asr.types import TranscribeRequest
from whisperlivekit.audio.vad import SileroVadModel, VadStream
from whisperlivekit.runtime.device_worker import DeviceWorker
from whisperlivekit.weights.resolve import resolve_model

CHUNK = 1600  # 100 ms at 16 kHz


def ms(values) -> str:
    values = sorted(values)
    return f"median {1000 * statistics.median(values):.2f} ms, p95 {1000 * values[int(0.95 * (len(values) - 1))]:.2f} ms"


def main() -> None:
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(16000 * 30)).astype(np.float32)
    vad = SileroVadModel()
    stream = VadStream()
    direct = []
    for start in range(0, len(audio) - CHUNK, CHUNK):
        t = time.perf_counter()
        stream.process(vad, audio[start : start + CHUNK])
        direct.append(time.perf_counter() - t)
    print(f"VAD on a 100 ms chunk, direct: {ms(direct)}")

    backend = FasterWhisperBackend(resolve_model("tiny.en"), device="cpu", cpu_threads=1, lanes=2)
    steps = []
    for _ in range(5):
        t = time.perf_counter()
        backend.transcribe_batch([TranscribeRequest(audio[: 16000 * 4])])
        steps.append(time.perf_counter() - t)
    print(f"Whisper step on 4 s (what a VAD job behind it would wait): {ms(steps)}")

    worker = DeviceWorker("cpu", backend, lanes=2, vad_model=vad)

    async def busy_lanes_and_vad():
        stop = asyncio.Event()

        async def keep_busy():
            while not stop.is_set():
                await worker.transcribe(TranscribeRequest(audio[: 16000 * 4]))

        busy = [asyncio.create_task(keep_busy()) for _ in range(3)]
        await asyncio.sleep(0.5)
        s, trips = VadStream(), []
        for start in range(0, 16000 * 10, CHUNK):
            t = time.perf_counter()
            await worker.vad(s, audio[start : start + CHUNK])
            trips.append(time.perf_counter() - t)
        stop.set()
        await asyncio.gather(*busy)
        return trips

    trips = asyncio.run(busy_lanes_and_vad())
    worker.close()
    print(f"await worker.vad(100 ms) on its own lane, both Whisper lanes busy: {ms(trips)}")


if __name__ == "__main__":
    main()
