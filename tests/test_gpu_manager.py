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


def test_an_unhealthy_gpu_gets_no_new_connections():
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


class FakeLoad:
    """A `DeviceLoad` whose readings the test sets."""

    def __init__(self, **loads: float) -> None:
        self.loads = dict(loads)

    def realtime_load(self, device: str) -> float:
        return self.loads.get(device.replace(":", "_"), 0.0)


def test_realtime_load_cap_refuses_a_saturated_device():
    load = FakeLoad(cpu=0.5)
    manager = GpuManager(SimulatedProbe(2), max_connections_per_gpu=8, max_realtime_load=0.8, load=load)
    assert manager.acquire("a").gpu_id == 0
    load.loads["cpu"] = 0.9
    with pytest.raises(NoCapacity):
        manager.acquire("b")


def _admits(manager: GpuManager, connection_id: str) -> bool:
    try:
        manager.acquire(connection_id)
        return True
    except NoCapacity:
        return False


@pytest.mark.parametrize("gpus", [0, 2])
def test_has_free_slot_answers_exactly_what_acquire_does_under_the_realtime_load_cap(gpus):
    load = FakeLoad()
    manager = GpuManager(SimulatedProbe(gpus), max_connections_per_gpu=2, max_cpu_connections=3, max_realtime_load=0.8, load=load)
    if gpus:  # simulated GPUs execute on the CPU: its load counts for them
        assert manager.execution_devices() == ["cpu"]
    seen = set()
    for step, cpu_load in enumerate([0.0, 0.5, 0.8, 0.95, 0.3, 0.0, 0.79, 0.81, 0.0, 0.0, 0.0, 0.0]):
        load.loads["cpu"] = cpu_load
        free = manager.has_free_slot()
        assert free == _admits(manager, f"c{step}"), (step, cpu_load, manager.snapshot())
        seen.add(free)
    assert seen == {True, False}
    assert not manager.has_free_slot() and not _admits(manager, "last")  # slots all taken now, load or not


def test_cpu_load_cap_applies_to_cpu_fallback_and_to_ready_alike():
    """Bug 1: `/ready` said 200 while the CPU's load cap refused every connection."""
    load = FakeLoad(cpu=0.9)
    manager = GpuManager(SimulatedProbe(0), max_cpu_connections=8, max_realtime_load=0.5, load=load)
    assert manager.has_free_slot() is False
    with pytest.raises(NoCapacity):
        manager.acquire("a")
    load.loads["cpu"] = 0.1
    assert manager.has_free_slot() is True
    assert manager.acquire("a").device == "cpu"


def test_a_real_gpu_over_its_load_cap_is_skipped_and_ready_agrees():
    load = FakeLoad()
    probe = SimulatedProbe(2)
    manager = GpuManager(probe, max_connections_per_gpu=4, max_realtime_load=0.5, load=load, cpu_fallback=False)
    # simulated GPUs run on "cpu"; pretend they were real by reading loads per GPU device
    manager._execution_device = lambda gpu: f"cuda:{gpu.index}"  # type: ignore[method-assign]
    load.loads["cuda_0"] = 0.7
    assert manager.has_free_slot() and manager.acquire("a").gpu_id == 1
    load.loads["cuda_1"] = 0.6
    assert manager.has_free_slot() is False
    with pytest.raises(NoCapacity):
        manager.acquire("b")


def test_reading_status_does_not_change_health_before_the_backoff_ends():
    clock = [0.0]
    probe, manager = simulated_host(unhealthy_backoff_s=10.0, clock=lambda: clock[0])
    manager.mark_unhealthy(2, "CUDA error: device-side assert")
    clock[0] = 5.0
    assert manager.has_free_slot()
    assert manager.snapshot()["gpus"][2]["healthy"] is False
    clock[0] = 10.5
    assert manager.snapshot()["gpus"][2]["healthy"] is True


def test_a_device_fault_takes_the_gpu_executing_on_that_device_out_of_rotation():
    _, manager = simulated_host()
    manager._execution_device = lambda gpu: f"cuda:{gpu.index}"  # type: ignore[method-assign]
    manager.report_fault("cuda:3", "CUDA error: an illegal memory access was encountered")
    assert [g["healthy"] for g in manager.snapshot()["gpus"]] == [True, True, True, False]
    assert all(manager.acquire(f"c{i}").gpu_id != 3 for i in range(12))


def test_nvml_is_read_without_holding_the_managers_lock():
    class LockCheckingProbe(SimulatedProbe):
        manager = None

        def read(self, index: int):
            assert self.manager is None or not self.manager._lock.locked(), "NVML read while holding the manager's lock"
            self.reads = getattr(self, "reads", 0) + 1
            return super().read(index)

    probe = LockCheckingProbe(4)
    manager = probe.manager = GpuManager(probe, max_connections_per_gpu=2)
    manager.acquire("a"), manager.has_free_slot(), manager.snapshot()
    probe.fail(1)
    manager.acquire("b")
    assert manager.snapshot()["gpus"][1]["healthy"] is False
    assert probe.reads > 4


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
