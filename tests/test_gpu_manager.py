"""The slot allocator, on a simulated 4-GPU host (no GPUs here: the probe is a test double)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from whisperlivekit.errors import NoCapacity
from whisperlivekit.gpu.manager import GpuManager
from whisperlivekit.gpu.nvml import NvmlProbe, ProbeError, SimulatedProbe


def simulated_host(**kwargs) -> tuple:
    probe = SimulatedProbe(4)
    return probe, GpuManager(probe, **{"max_connections_per_gpu": 4, **kwargs})


def test_connections_1_to_16_land_round_robin_on_4_simulated_gpus():
    _, manager = simulated_host()
    assert [manager.acquire(f"c{i}").gpu_id for i in range(16)] == [0, 1, 2, 3] * 4


def test_17th_connection_is_refused_on_4_simulated_gpus_of_4_slots():
    _, manager = simulated_host()
    for i in range(16):
        manager.acquire(f"c{i}")
    with pytest.raises(NoCapacity, match="No GPU available"):
        manager.acquire("c16")


def test_release_frees_exactly_the_released_slot():
    _, manager = simulated_host()
    slots = [manager.acquire(f"c{i}") for i in range(16)]
    assert manager.release(slots[6]) is True  # c6 held GPU 2
    assert manager.acquire("new").gpu_id == 2
    assert manager.snapshot()["gpus"][2]["connection_ids"].count("new") == 1
    assert "c6" not in manager.snapshot()["gpus"][2]["connection_ids"]


def test_release_is_idempotent():
    _, manager = simulated_host()
    slot = manager.acquire("a")
    assert manager.release(slot) is True
    assert manager.release(slot) is False
    assert manager.release("never-held") is False
    assert manager.held() == 0


def test_least_loaded_prefers_fewest_connections_then_most_free_memory():
    probe, manager = simulated_host()
    probe.set_free_memory(3, 15.0)
    for gpu in (0, 1, 2):
        probe.set_free_memory(gpu, 10.0)
    assert manager.acquire("a").gpu_id == 3  # all idle: most free memory wins
    assert manager.acquire("b").gpu_id in (0, 1, 2)  # GPU 3 now has one connection


def test_unhealthy_simulated_gpu_is_skipped_and_reprobed_after_backoff():
    clock = [0.0]
    probe, manager = simulated_host(unhealthy_backoff_s=10.0, clock=lambda: clock[0])
    probe.fail(1)
    got = [manager.acquire(f"c{i}").gpu_id for i in range(6)]
    assert 1 not in got
    status = manager.snapshot()["gpus"][1]
    assert status["healthy"] is False and "NVML" in status["unhealthy_reason"]
    probe.fail(1, False)
    clock[0] = 11.0
    assert manager.acquire("after-backoff").gpu_id == 1


def test_engine_build_failure_marks_gpu_unhealthy():
    _, manager = simulated_host()
    manager.mark_unhealthy(0, "CUDA error: out of memory")
    assert all(manager.acquire(f"c{i}").gpu_id != 0 for i in range(12))
    with pytest.raises(NoCapacity):
        manager.acquire("c12")


def test_min_free_memory_threshold_is_respected():
    probe, manager = simulated_host(min_free_memory_gb=4.0)
    probe.set_free_memory(0, 3.9)
    probe.set_free_memory(2, 1.0)
    assert {manager.acquire(f"c{i}").gpu_id for i in range(8)} == {1, 3}


def test_round_robin_policy_cycles_regardless_of_load():
    _, manager = simulated_host(policy="round-robin")
    a = manager.acquire("a")
    manager.release(a)
    assert [manager.acquire(f"c{i}").gpu_id for i in range(5)] == [1, 2, 3, 0, 1]


def test_gpus_flag_restricts_devices():
    _, manager = simulated_host(gpu_ids=(0, 2, 3))
    assert {manager.acquire(f"c{i}").gpu_id for i in range(12)} == {0, 2, 3}
    assert manager.snapshot()["total_gpus"] == 3


def test_cpu_fallback_only_when_no_gpu_is_usable():
    probe, manager = simulated_host(max_cpu_connections=2)
    for gpu in range(4):
        probe.fail(gpu)
    assert manager.acquire("a").device == "cpu" and manager.acquire("a").gpu_id is None
    _, strict = simulated_host(cpu_fallback=False)
    strict.mark_unhealthy(0, "x"), strict.mark_unhealthy(1, "x"), strict.mark_unhealthy(2, "x"), strict.mark_unhealthy(3, "x")
    with pytest.raises(NoCapacity):
        strict.acquire("b")


def test_host_without_gpus_serves_on_cpu_up_to_its_cap():
    manager = GpuManager(SimulatedProbe(0), max_cpu_connections=3)
    assert [manager.acquire(f"c{i}").device for i in range(3)] == ["cpu"] * 3
    with pytest.raises(NoCapacity):
        manager.acquire("c3")


def test_no_nvidia_driver_means_zero_gpus_not_a_crash():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        gpus_the_driver_reports = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:  # no driver or no library: the case this test is about
        gpus_the_driver_reports = 0
    probe = NvmlProbe()
    assert probe.count() == gpus_the_driver_reports
    if gpus_the_driver_reports == 0:
        with pytest.raises(ProbeError):  # a typed error the manager handles, not an AttributeError
            probe.read(0)


def test_realtime_load_cap_refuses_a_saturated_device():
    load = {"cpu": 0.5}
    manager = GpuManager(SimulatedProbe(2), max_connections_per_gpu=8, max_realtime_load=0.8, load_of=lambda d: load[d])
    assert manager.acquire("a").gpu_id == 0
    load["cpu"] = 0.9
    with pytest.raises(NoCapacity):
        manager.acquire("b")


def test_acquire_and_release_are_thread_safe():
    _, manager = simulated_host(max_connections_per_gpu=50)
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(200):
                slot = manager.acquire(f"t{n}-{i}")
                manager.release(slot)
                manager.release(slot)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and manager.held() == 0
    assert all(g["active_connections"] == 0 for g in manager.snapshot()["gpus"])


def test_queued_connections_are_served_first_come_first_served():
    async def scenario():
        _, manager = simulated_host(max_connections_per_gpu=1)
        held = [manager.acquire(f"h{i}") for i in range(4)]
        positions = {}
        order = []

        async def wait(name: str):
            slot = await manager.acquire_waiting(name, 5.0, lambda p: positions.setdefault(name, p))
            order.append(name)
            return slot

        first = asyncio.create_task(wait("first"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0.05)
        manager.release(held[0])
        await asyncio.wait_for(first, 2)
        manager.release(held[1])
        await asyncio.wait_for(second, 2)
        return order, positions

    order, positions = asyncio.run(scenario())
    assert order == ["first", "second"]
    assert positions == {"first": 1, "second": 2}


def test_queue_timeout_ends_in_refusal():
    async def scenario():
        _, manager = simulated_host(max_connections_per_gpu=1)
        for i in range(4):
            manager.acquire(f"h{i}")
        with pytest.raises(NoCapacity):
            await manager.acquire_waiting("late", 0.3)
        return manager.snapshot()["queued"]

    assert asyncio.run(scenario()) == 0
