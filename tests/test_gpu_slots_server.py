"""GPU slots through the real server, with `--simulate-gpus` (engines run on this CPU)."""

from __future__ import annotations

import asyncio
import time

import httpx

from conftest import run, running_server
from helpers import close_code_after, drop_tcp, eventually, ffmpeg_children, open_session


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
