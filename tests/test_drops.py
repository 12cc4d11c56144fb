"""Hundreds of abruptly dropped connections: the server survives and keeps nothing of them.

Each cycle connects, reads `config`, sends 1..20 chunks of 2,000 bytes of real speech
10 ms apart and aborts the TCP connection (no close frame), from 8 clients at once, in
both input modes. This once killed the process with native heap corruption (WebM mode)
and left ffmpeg's pipes open until a GC cycle. `scripts/bench_drops.py` is the long run.
"""

from __future__ import annotations

import asyncio
import os
import random

import psutil
import pytest
import websockets

from conftest import run, running_server
from helpers import drop_tcp, eventually, ffmpeg_children

CYCLES = int(os.environ.get("WLK_DROP_CYCLES", "300"))
CLIENTS = 8
CHUNK_BYTES = 2_000


def _descriptors(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def _drop_cycles(url: str, payload: bytes, cycles: int = CYCLES) -> dict:
    outcomes: dict = {}

    async def cycle(rng: random.Random) -> str:
        try:
            ws = await websockets.connect(url, max_size=None, open_timeout=30)
        except websockets.InvalidMessage:
            # seen once in 300 cycles in a fresh-clone suite run on 2 busy cores: the handshake's connection
            # closed before any HTTP response (cause not found); counted, bounded below, never a crash
            return "no-handshake"
        try:
            if '"config"' not in await asyncio.wait_for(ws.recv(), 30):
                return "no-config"
            for k in range(rng.randint(1, 20)):
                await ws.send(payload[k * CHUNK_BYTES:(k + 1) * CHUNK_BYTES])
                await asyncio.sleep(0.01)
            return "dropped"
        except websockets.ConnectionClosed as closed:
            return f"closed-{closed.rcvd.code if closed.rcvd else 'abnormal'}"
        finally:
            drop_tcp(ws)

    async def client(n: int) -> None:
        rng = random.Random(n)
        for _ in range(n, cycles, CLIENTS):
            outcome = await cycle(rng)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def scenario() -> None:
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))

    run(scenario())
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["webm", "pcm"])
def test_hundreds_of_dropped_connections_leave_the_server_up_with_no_slot_ffmpeg_or_descriptor_held(mode, speech_pcm, webm):
    pcm, _ = speech_pcm("harvard")
    payload = webm(pcm) if mode == "webm" else pcm
    flags = ["--max-cpu-connections", "16"] + (["--pcm-input"] if mode == "pcm" else [])
    with running_server(*flags, env={"PYTHONFAULTHANDLER": "1"}) as server:
        descriptors_before = _descriptors(server.proc.pid)
        outcomes = _drop_cycles(server.ws_url, payload)
        print("outcomes:", outcomes)

        assert server.proc.poll() is None, f"server died:\n{server.log()[-4000:]}"
        assert sum(outcomes.values()) == CYCLES
        assert outcomes.get("dropped", 0) >= CYCLES // 2, outcomes
        assert outcomes.get("no-handshake", 0) <= CYCLES // 100, outcomes
        assert eventually(lambda: server.get("/health").json()["active_connections"] == 0, timeout=30)
        assert eventually(lambda: not ffmpeg_children(server.proc.pid), timeout=30)
        # Every dropped connection's sockets and pipes are closed (a few threads' descriptors may appear once).
        assert eventually(lambda: _descriptors(server.proc.pid) <= descriptors_before + 4, timeout=30), (
            descriptors_before, _descriptors(server.proc.pid), os.listdir(f"/proc/{server.proc.pid}/fd"))
        assert server.get("/health").status_code == 200


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closing_a_decoder_whose_output_nobody_read_closes_its_pipes(speech_pcm, webm):
    """A dropped connection stops reading ffmpeg's stdout; close() must still free its pipes (under uvloop, as served)."""
    import uvloop

    from whisperlivekit.audio.decode import FFmpegDecoder

    payload = webm(speech_pcm("harvard")[0])

    async def drop_one() -> None:
        decoder = FFmpegDecoder()
        await decoder.start()
        for k in range(20):
            await decoder.feed(payload[k * CHUNK_BYTES:(k + 1) * CHUNK_BYTES])
        await asyncio.sleep(0.3)  # ffmpeg fills the unread stdout
        await decoder.close()

    async def scenario() -> int:
        await drop_one()  # the loop's own child-watcher descriptors appear with the first child
        await asyncio.sleep(0.2)
        before = _open_descriptors()
        for _ in range(5):
            await drop_one()
        await asyncio.sleep(0.2)
        return _open_descriptors() - before

    assert uvloop.run(scenario()) == 0


def test_a_stopped_vad_stream_gives_up_at_the_next_window():
    """close() stops the connection's VAD call instead of letting it run on after the connection is gone."""
    import threading

    import numpy as np

    from whisperlivekit.audio.vad import WINDOW, SileroVadModel, VadStream

    model, stream = SileroVadModel(), VadStream()
    audio = np.zeros(60 * 16_000, dtype=np.float32)
    worker = threading.Thread(target=stream.process, args=(model, audio))
    worker.start()
    stream.stop()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert stream.samples_seen < len(audio) // WINDOW * WINDOW


def test_the_device_workers_load_window_forgets_old_batches_without_anyone_asking_for_the_load():
    """Nothing reads the load on an unscraped CPU server: the per-job record must not grow for ever."""
    from whisperlivekit.runtime.load import LoadMeter

    now = [0.0]
    meter = LoadMeter(lanes=1, window_s=10.0, clock=lambda: now[0])
    for _ in range(1000):  # the jobs of an hour-long session, one every 3.6 s
        meter.record(0.1)
        now[0] += 3.6
    meter.record(0.1)
    assert len(meter._busy) <= 4  # only the last 10 s are kept, though nobody asked for the load


@pytest.mark.slow
def test_sigterm_right_after_a_burst_of_drops_drains_without_waiting_for_gone_clients(speech_pcm, webm):
    """A dropped client's session ends with its connection: the drain never sits out its deadline for it."""
    import signal

    payload = webm(speech_pcm("harvard")[0])
    with running_server("--max-cpu-connections", "16", "--drain-timeout", "30", env={"PYTHONFAULTHANDLER": "1"}) as server:
        try:
            outcomes = _drop_cycles(server.ws_url, payload, cycles=80)
        except OSError as exc:  # once in CI: refused mid-burst; was the server gone, and why?
            pytest.fail(f"{exc!r}; server exit code {server.proc.poll()}; its log:\n{server.log()[-6000:]}")
        assert outcomes.get("dropped", 0) >= 40, outcomes
        assert server.stop(signal.SIGTERM, timeout_s=60) == 0
        log = server.log()
        assert "Drained: all streams ended" in log, log[-3000:]
        assert "Drain deadline" not in log
