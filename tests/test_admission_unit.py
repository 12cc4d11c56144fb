"""The GPU manager's admission rule through its public API, on simulated GPUs.

The rule everything else relies on: `/ready` (`has_free_slot`) says yes exactly when a new
connection would be admitted (`acquire`), whatever fills, fails or loads the devices.
"""

from __future__ import annotations

from typing import Dict

import pytest

from whisperlivekit.errors import NoCapacity
from whisperlivekit.gpu.manager import GpuManager
from whisperlivekit.gpu.nvml import SimulatedProbe


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def admits(manager: GpuManager) -> bool:
    """Whether a new connection gets a slot right now (the probe connection is released again)."""
    try:
        manager.acquire("probe-connection")
    except NoCapacity:
        return False
    manager.release("probe-connection")
    return True


def assert_ready_means_admitted(manager: GpuManager) -> bool:
    ready = manager.has_free_slot()
    assert ready == admits(manager), f"/ready says {ready} but acquire {'refuses' if ready else 'admits'}"
    return ready


def test_ready_matches_admission_as_two_gpus_fill_up_and_empty():
    manager = GpuManager(SimulatedProbe(2), max_connections_per_gpu=2, cpu_fallback=False)
    readiness = []
    for i in range(4):
        readiness.append(assert_ready_means_admitted(manager))
        manager.acquire(f"c{i}")
    readiness.append(assert_ready_means_admitted(manager))
    assert readiness == [True, True, True, True, False]
    manager.release("c2")
    assert assert_ready_means_admitted(manager)
    assert manager.acquire("again").gpu_id == 0  # c2 had GPU 0 (round the two GPUs: 0 1 0 1)


def test_a_full_host_is_not_ready_and_refuses_with_no_capacity():
    manager = GpuManager(SimulatedProbe(1), max_connections_per_gpu=1, cpu_fallback=False)
    manager.acquire("only")
    assert not manager.has_free_slot()
    with pytest.raises(NoCapacity):
        manager.acquire("one-too-many")


def test_an_unhealthy_gpu_takes_no_connections_until_its_back_off_ends():
    clock = FakeClock()
    probe = SimulatedProbe(1)
    manager = GpuManager(probe, unhealthy_backoff_s=10.0, cpu_fallback=False, clock=clock)
    manager.mark_unhealthy(0, "CUDA error: device lost")
    assert not assert_ready_means_admitted(manager)
    clock.now_s = 10.0
    assert assert_ready_means_admitted(manager)  # re-probed after the back-off, and healthy


def test_a_gpu_the_probe_cannot_read_is_not_offered():
    probe = SimulatedProbe(2)
    manager = GpuManager(probe, max_connections_per_gpu=1, cpu_fallback=False)
    probe.fail(0)
    assert manager.acquire("a").gpu_id == 1
    assert not assert_ready_means_admitted(manager)


def test_when_every_gpu_is_unhealthy_the_cpu_takes_connections_up_to_its_cap():
    manager = GpuManager(SimulatedProbe(2), max_cpu_connections=1)
    manager.mark_unhealthy(0, "x")
    manager.mark_unhealthy(1, "x")
    assert assert_ready_means_admitted(manager)
    assert manager.acquire("a").device == "cpu"
    assert not assert_ready_means_admitted(manager)


def test_too_little_free_memory_makes_a_gpu_unavailable():
    probe = SimulatedProbe(1)
    manager = GpuManager(probe, min_free_memory_gb=4.0, cpu_fallback=False)
    probe.set_free_memory(0, 3.9)
    assert not assert_ready_means_admitted(manager)
    probe.set_free_memory(0, 4.1)
    assert assert_ready_means_admitted(manager)


class _Loads:
    """A DeviceLoad over a dict the test sets: the measured load itself needs real inference (tests/test_ready.py)."""

    def __init__(self, loads: Dict[str, float]) -> None:
        self.loads = loads

    def realtime_load(self, device: str) -> float:
        return self.loads[device]


def test_a_saturated_simulated_gpu_is_not_ready_and_refuses():
    load: Dict[str, float] = {"cpu": 0.5}  # simulated GPUs execute on the CPU
    manager = GpuManager(SimulatedProbe(1), max_realtime_load=0.8, load=_Loads(load))
    assert assert_ready_means_admitted(manager)
    load["cpu"] = 0.9
    assert not assert_ready_means_admitted(manager)


def test_a_saturated_cpu_host_is_not_ready_and_refuses():
    load: Dict[str, float] = {"cpu": 0.5}
    manager = GpuManager(SimulatedProbe(0), max_cpu_connections=4, max_realtime_load=0.8, load=_Loads(load))
    assert assert_ready_means_admitted(manager)
    load["cpu"] = 0.9
    assert not assert_ready_means_admitted(manager)


def test_a_burst_of_arrivals_is_admitted_only_up_to_the_measured_cost_per_stream():
    """Four streams settled at a measured load of 0.4 cost 0.1 each; a burst arriving before the meter
    can see it is charged at that cost, so only the streams that fit under the 0.8 cap get in."""
    clock = [0.0]
    load: Dict[str, float] = {"cpu": 0.0}
    manager = GpuManager(SimulatedProbe(0), max_cpu_connections=64, max_realtime_load=0.8, load=_Loads(load),
                         load_settle_s=10.0, clock=lambda: clock[0])
    for i in range(4):
        manager.acquire(f"settled-{i}")
    clock[0] = 30.0
    load["cpu"] = 0.4
    admitted = []
    for i in range(6):
        try:
            admitted.append(manager.acquire(f"burst-{i}").connection_id)
        except NoCapacity:
            pass
    assert admitted == ["burst-0", "burst-1", "burst-2"], admitted  # projected 0.5, 0.6, 0.7; then 0.8 is refused
    assert not manager.has_free_slot()
    manager.release("settled-0")
    manager.release("burst-2")
    clock[0] = 60.0
    load["cpu"] = 0.5  # five streams seen in full: 0.1 each, room for two more
    assert assert_ready_means_admitted(manager)


def test_streams_that_just_left_count_in_the_cost_per_stream_so_short_sessions_do_not_look_expensive():
    """Four 5 s sessions ended just now and two streams have run for the whole 10 s window, each costing
    0.09: the meter reads 0.36. Charged to the two holders alone (0.18 each), a third stream would project
    to 0.54 and be refused under a 0.5 cap; counted with the departed ones it projects to 0.45."""
    clock = FakeClock()
    load: Dict[str, float] = {"cpu": 0.0}
    manager = GpuManager(SimulatedProbe(0), max_cpu_connections=64, max_realtime_load=0.5, load=_Loads(load),
                         load_settle_s=10.0, clock=clock)
    clock.now_s = 100.0
    manager.acquire("long-0"), manager.acquire("long-1")
    clock.now_s = 105.0
    for i in range(4):
        manager.acquire(f"short-{i}")
    clock.now_s = 110.0
    for i in range(4):
        manager.release(f"short-{i}")
    load["cpu"] = 4 * 0.5 * 0.09 + 2 * 0.09
    assert assert_ready_means_admitted(manager)
    assert manager.acquire("third").device == "cpu"
    # and once the departed sessions have left the window, the holders carry the load again
    clock.now_s = 125.0
    load["cpu"] = 3 * 0.09 * 1.6  # the three streams now measured dearer: 0.432 over 3 seen
    assert not assert_ready_means_admitted(manager)  # 0.432 + 0.144 = 0.576 >= 0.5


def test_the_record_of_departed_streams_stays_bounded_with_admission_off():
    """Departed streams are remembered for one load window. They were pruned only while judging
    admission, so with `--max-realtime-load 0` the record grew by one entry per connection forever."""
    clock = FakeClock()
    manager = GpuManager(SimulatedProbe(0), max_cpu_connections=64, max_realtime_load=0.0, load_settle_s=10.0,
                         clock=clock)
    for i in range(1000):
        clock.now_s = float(i)
        manager.acquire(f"c{i}")
        manager.release(f"c{i}")
    assert len(manager._departed["cpu"]) <= 11  # one a second, over a 10 s window
