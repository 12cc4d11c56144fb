"""GPU slots through the real server, with `--simulate-gpus` (engines run on this CPU)."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from conftest import in_process_server, run, running_server
from helpers import close_code_after, drop_tcp, eventually, ffmpeg_children, open_session
from whisperlivekit.app import create_app
from whisperlivekit.config import Settings
from whisperlivekit.errors import DeviceError
from whisperlivekit.services import build_engine


def test_16_simulated_gpu_slots_fill_then_17th_is_refused_with_1008_and_all_are_released():
    # the 16 holders send no audio: --min-audio-rate 0 lets them keep their slots however slow the test runs
    with running_server("--simulate-gpus", "4", "--max-connections-per-gpu", "4", "--min-audio-rate", "0") as server:
        async def scenario():
            sessions = []
            for _ in range(16):
                ws, first, code = await open_session(server.ws_url)
                assert code is None and first["type"] == "config", first
                sessions.append((ws, first))
            status = httpx.get(server.base_url + "/gpu-status").json()
            per_gpu = [g["active_connections"] for g in status["gpus"]]
            gpu_ids = sorted(first["gpu_id"] for _, first in sessions)
            assert server.get("/ready").status_code == 503

            started = time.monotonic()
            ws17, first17, code17 = await open_session(server.ws_url)
            refusal_s = time.monotonic() - started
            reason = ws17.close_reason
            # half close politely, half vanish without a close frame
            for i, (ws, _) in enumerate(sessions):
                if i % 2:
                    drop_tcp(ws)
                else:
                    await ws.close()
            return per_gpu, gpu_ids, status, first17, code17, reason, refusal_s

        per_gpu, gpu_ids, status, first17, code17, reason, refusal_s = run(scenario())
        assert per_gpu == [4, 4, 4, 4]
        assert gpu_ids == sorted([0, 1, 2, 3] * 4)
        assert status["total_connections"] == 16 and status["total_gpus"] == 4
        assert all(g["simulated"] for g in status["gpus"])
        assert first17 is None and code17 == 1008 and reason == "No GPU available"
        print(f"17th connection refused in {refusal_s * 1000:.0f} ms (includes the WebSocket handshake)")
        released = eventually(lambda: httpx.get(server.base_url + "/gpu-status").json()["total_connections"] == 0)
        assert released, httpx.get(server.base_url + "/gpu-status").json()
        assert all(g["active_connections"] == 0 for g in httpx.get(server.base_url + "/gpu-status").json()["gpus"])
        assert server.get("/ready").status_code == 200
        assert eventually(lambda: not ffmpeg_children(server.proc.pid)), "ffmpeg children leaked"
        log = server.log()
        assert "Allocated GPU 0 (simulated) to connection" in log and "(load 1/4, memory" in log
        assert "Released GPU" in log and "(remaining" in log


def test_gpu_status_follows_the_protocol_shape():
    with running_server("--simulate-gpus", "2") as server:
        body = server.get("/gpu-status").json()
    assert {"total_gpus", "healthy_gpus", "total_connections", "max_connections_per_gpu", "gpus"} <= set(body)
    gpu = body["gpus"][0]
    for key in ("gpu_id", "name", "healthy", "active_connections", "total_memory_gb", "used_memory_gb",
                "free_memory_gb", "memory_used_percent", "utilization_percent"):
        assert key in gpu
    assert body["total_gpus"] == 2 and body["healthy_gpus"] == 2


def test_startup_log_prints_the_gpu_table():
    with running_server("--simulate-gpus", "3", "--gpus", "0,2") as server:
        log = server.log()
        status = server.get("/gpu-status").json()
    assert "GPU 0: Simulated Tesla T4 (simulated) connections 0/4" in log
    assert "GPU 2: Simulated Tesla T4" in log and "GPU 1:" not in log
    assert [g["gpu_id"] for g in status["gpus"]] == [0, 2]


def test_queue_timeout_makes_a_new_connection_wait_for_a_slot():
    with running_server("--simulate-gpus", "1", "--max-connections-per-gpu", "1", "--queue-timeout", "10",
                        "--min-audio-rate", "0") as server:
        async def scenario():
            holder, first, _ = await open_session(server.ws_url)
            import json
            import websockets

            waiter = await websockets.connect(server.ws_url)
            queued = json.loads(await asyncio.wait_for(waiter.recv(), 5))
            await holder.close()
            config = json.loads(await asyncio.wait_for(waiter.recv(), 10))
            await waiter.close()
            return first, queued, config

        first, queued, config = run(scenario())
    assert first["gpu_id"] == 0
    assert queued == {"type": "queued", "position": 1}
    assert config["type"] == "config" and config["gpu_id"] == 0


def test_no_cpu_fallback_refuses_when_every_gpu_is_excluded():
    with running_server("--simulate-gpus", "2", "--gpus", "5", "--no-cpu-fallback") as server:
        async def scenario():
            ws, first, code = await open_session(server.ws_url)
            return first, code

        first, code = run(scenario())
        assert first is None and code == 1008
        assert server.get("/ready").status_code == 503


def _engine_factory_failing_on_gpu_1(error: Exception):
    """The real engine everywhere but simulated GPU 1, whose engine build raises `error`."""
    async def factory(services, slot, language):
        if slot.gpu_id == 1:
            raise error
        return await build_engine(services, slot, language)
    return factory


def _two_sessions_on_two_gpus(error: Exception):
    """Two connections to a 2-GPU host whose GPU 1 fails engine builds; (first messages, close codes, /gpu-status)."""
    app = create_app(Settings(simulate_gpus=2, max_connections_per_gpu=4), engine_factory=_engine_factory_failing_on_gpu_1(error))
    with in_process_server(app) as base:
        async def scenario():
            firsts, codes, sockets = [], [], []
            for _ in range(2):
                ws, first, code = await open_session(base.replace("http", "ws") + "/asr")
                if code is None and first["type"] != "config":  # an error message, then the close
                    code = await close_code_after(ws)
                firsts.append(first), codes.append(code), sockets.append(ws)
            status = httpx.get(base + "/gpu-status").json()
            for ws in sockets:
                await ws.close()
            return firsts, codes, status
        return run(scenario())


def test_a_device_error_building_an_engine_takes_the_gpu_out_of_rotation_and_the_client_is_served_elsewhere():
    firsts, codes, status = _two_sessions_on_two_gpus(DeviceError("CUDA failed with error out of memory"))
    assert codes == [None, None]
    assert [first["type"] for first in firsts] == ["config", "config"]
    assert [first["gpu_id"] for first in firsts] == [0, 0]
    gpu1 = status["gpus"][1]
    assert gpu1["gpu_id"] == 1 and gpu1["healthy"] is False and gpu1["active_connections"] == 0
    assert status["gpus"][0]["healthy"] is True


def test_a_plain_bug_building_an_engine_closes_1011_logs_its_traceback_and_leaves_the_gpu_healthy(caplog):
    caplog.set_level(logging.ERROR, logger="whisperlivekit.api.asr")
    firsts, codes, status = _two_sessions_on_two_gpus(RuntimeError("a plain bug in the engine factory"))
    assert sorted(codes, key=str) == [1011, None]  # one served on GPU 0, the one sent to GPU 1 gets 1011
    served, refused = [first for first, code in zip(firsts, codes) if code is None], [first for first, code in zip(firsts, codes) if code]
    assert served[0]["type"] == "config" and served[0]["gpu_id"] == 0
    assert refused[0]["type"] == "error" and "internal error" in refused[0]["error"]
    assert [gpu["healthy"] for gpu in status["gpus"]] == [True, True]
    assert status["gpus"][1]["active_connections"] == 0
    logged = [record for record in caplog.records if record.exc_info and "a plain bug" in str(record.exc_info[1])]
    assert logged, "the bug must be logged with its traceback"
