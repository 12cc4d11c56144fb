"""Who holds which GPU: the process's one slot allocator.

Every `/asr` connection asks for a `Slot` before any audio is accepted and gives
it back in `finally`. The manager knows devices, capacity and holders; it never
touches models and never formats responses (`gpu/report.py` does). It is guarded
by one `threading.Lock` (device workers call `report_fault` from their threads),
never held while reading NVML or the device load, and offers an async FIFO wait
for `--queue-timeout`.

The admission rule is written once (`_admit`) and used by both `acquire` and
`has_free_slot` (`/ready`), so `/ready` answers 503 exactly when a new connection
would be refused. The manager is given the devices' real-time load at
construction (`DeviceLoad`) and is the pool's `DeviceHealth` (`report_fault`).

Admission by measured load (`--max-realtime-load`, 0.9 by default; 0: off): a device is
refused when its load *after* one more stream would reach the cap. The meter averages
over `load_settle_s`, so a stream admitted t seconds ago shows in it only for the share
t / load_settle_s; the rest of its cost is added at the device's measured cost per
stream (load / streams already seen, counting for the part of the window they ran in the
streams that have just left), so a burst of arrivals is not all admitted on the strength
of a load that has not seen them yet. A device nobody holds is judged on its
measured load alone. `--max-connections-per-gpu` and
`--max-cpu-connections` stay as hard caps on top.

Longer than ~300 lines because one lock guards four things that must change
together: readings applied, the admission decision, holders, and the FIFO wait
woken on release; splitting them would split that lock.

CPU fallback: a host with no usable GPU (none found, all unhealthy) serves on
the CPU unless `cpu_fallback` is off. A host whose healthy GPUs are merely full
refuses (close 1008): overflowing onto the CPU would make every overflow stream
lag, which is what capacity limits exist to prevent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

from whisperlivekit.errors import NoCapacity
from whisperlivekit.gpu.nvml import GpuInfo, GpuProbe, ProbeError

logger = logging.getLogger(__name__)

CPU_DEVICE = "cpu"


class DeviceLoad(Protocol):
    """Compute seconds per wall second per lane on an execution device ("cpu", "cuda:N")."""

    def realtime_load(self, device: str) -> float: ...


@dataclass(frozen=True)
class Slot:
    """A connection's claim on one device. `device` is where its engine runs."""

    connection_id: str
    gpu_id: Optional[int]
    device: str
    simulated: bool = False

    @property
    def label(self) -> str:
        if self.gpu_id is None:
            return "CPU"
        return f"GPU {self.gpu_id}" + (" (simulated)" if self.simulated else "")

    @property
    def reported_device(self) -> str:
        """What the client is told: the GPU it was given, even when simulated on the CPU."""
        return f"cuda:{self.gpu_id}" if self.gpu_id is not None else CPU_DEVICE


@dataclass
class _Gpu:
    index: int
    info: Optional[GpuInfo] = None
    holders: List[str] = field(default_factory=list)
    healthy: bool = True
    unhealthy_reason: str = ""
    retry_at: float = 0.0


@dataclass(frozen=True)
class GpuView:
    """One GPU as the manager sees it at one moment (what reports format)."""

    index: int
    info: Optional[GpuInfo]
    holders: Tuple[str, ...]
    healthy: bool
    unhealthy_reason: str


@dataclass(frozen=True)
class ManagerView:
    """A consistent copy of the manager's state, taken under its lock."""

    gpus: Tuple[GpuView, ...]
    cpu_holders: Tuple[str, ...]
    held: int
    queued: int
    max_connections_per_gpu: int
    max_cpu_connections: int
    cpu_fallback: bool


_CPU = "cpu"  # what `_admit` returns when the CPU takes the connection
Reading = Union[GpuInfo, ProbeError]


class GpuManager:
    def __init__(
        self,
        probe: GpuProbe,
        *,
        gpu_ids: Optional[Sequence[int]] = None,
        max_connections_per_gpu: int = 4,
        max_cpu_connections: int = 8,
        min_free_memory_gb: float = 0.0,
        policy: str = "least-loaded",
        cpu_fallback: bool = True,
        unhealthy_backoff_s: float = 30.0,
        max_realtime_load: float = 0.0,
        load: Optional[DeviceLoad] = None,
        load_settle_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in ("least-loaded", "round-robin"):
            raise ValueError(f"unknown GPU policy {policy!r}: use least-loaded or round-robin")
        self._probe = probe
        self._lock = threading.Lock()
        self._clock = clock
        available = range(probe.count())
        chosen = list(available) if gpu_ids is None else [i for i in gpu_ids if i in available]
        if gpu_ids is not None and len(chosen) != len(gpu_ids):
            missing = sorted(set(gpu_ids) - set(available))
            logger.warning("--gpus lists %s but this host has %d GPU(s); ignoring %s", list(gpu_ids), probe.count(), missing)
        self._gpus: Dict[int, _Gpu] = {i: _Gpu(i) for i in chosen}
        self._cpu_holders: List[str] = []
        self._slots: Dict[str, Slot] = {}
        self.max_connections_per_gpu = max_connections_per_gpu
        self.max_cpu_connections = max_cpu_connections
        self.min_free_memory_gb = min_free_memory_gb
        self.policy = policy
        self.cpu_fallback = cpu_fallback
        self.unhealthy_backoff_s = unhealthy_backoff_s
        self.max_realtime_load = max_realtime_load
        self._load = load
        self.load_settle_s = load_settle_s  # the load meter's window: how long a new stream takes to show in full
        self._admitted_at: Dict[str, float] = {}
        self._departed: Dict[str, List[Tuple[float, float]]] = {}  # device -> (admitted, released) of recent streams
        self._cost_per_stream: Dict[str, float] = {}  # last measured load per fully-seen stream, per device
        self._rr_cursor = 0
        self._waiters: List[asyncio.Future] = []
        self.refusals: Dict[str, int] = {}
        self.refresh()
        self.simulated = bool(chosen) and all(g.info is None or g.info.simulated for g in self._gpus.values())

    # -- device facts, read outside the lock -------------------------------------------
    def _read_devices(self) -> Dict[int, Reading]:
        """Fresh NVML facts for every GPU in rotation or due for a re-probe (no lock held)."""
        now = self._clock()
        with self._lock:
            due = [g.index for g in self._gpus.values() if g.healthy or now >= g.retry_at]
        readings: Dict[int, Reading] = {}
        for index in due:
            try:
                readings[index] = self._probe.read(index)
            except ProbeError as exc:
                readings[index] = exc
        return readings

    def _apply(self, readings: Dict[int, Reading]) -> None:
        """Record readings (caller holds the lock): a failed read marks the GPU unhealthy; a good read after
        the back-off puts it back in rotation."""
        now = self._clock()
        for index, reading in readings.items():
            gpu = self._gpus[index]
            if isinstance(reading, ProbeError):
                self._set_unhealthy(gpu, str(reading))
                continue
            gpu.info = reading
            if not gpu.healthy and now >= gpu.retry_at:
                gpu.healthy = True
                logger.info("GPU %d back in rotation after its back-off", gpu.index)

    def refresh(self) -> None:
        """Re-read every GPU's facts and update health."""
        readings = self._read_devices()
        with self._lock:
            self._apply(readings)

    def _read_loads(self) -> Dict[str, float]:
        """Real-time load per execution device, when a cap applies (no lock held)."""
        if not self.max_realtime_load or self._load is None:
            return {}
        return {device: self._load.realtime_load(device) for device in self.execution_devices()}

    def _set_unhealthy(self, gpu: _Gpu, reason: str) -> None:
        if gpu.healthy:
            logger.error("GPU %d marked unhealthy: %s (retry in %.0f s)", gpu.index, reason, self.unhealthy_backoff_s)
        gpu.healthy = False
        gpu.unhealthy_reason = reason
        gpu.retry_at = self._clock() + self.unhealthy_backoff_s

    def _execution_device(self, gpu: _Gpu) -> str:
        return CPU_DEVICE if gpu.info is not None and gpu.info.simulated else f"cuda:{gpu.index}"

    # -- the admission rule (caller holds the lock; pure: changes nothing) ------------
    def _overloaded(self, device: str, loads: Dict[str, float]) -> bool:
        return bool(self.max_realtime_load) and self.projected_load(device, loads) >= self.max_realtime_load

    def projected_load(self, device: str, loads: Dict[str, float]) -> float:
        """The device's load once one more stream runs on it, counting the unseen part of recent
        arrivals (see the module docstring); remembers the measured cost per stream (lock held)."""
        load = loads.get(device, 0.0)
        now = self._clock()
        seen = unseen = 0.0
        holders = [cid for cid, slot in self._slots.items() if slot.device == device]
        if not holders:  # the cost per stream is measured afresh on the streams to come
            self._cost_per_stream.pop(device, None)
            return load
        for connection_id in holders:
            share = min(1.0, max(0.0, now - self._admitted_at.get(connection_id, now)) / self.load_settle_s)
            seen, unseen = seen + share, unseen + 1.0 - share
        # Streams that left within the window are still in the measured load for the time they ran in it;
        # not counting them made short sessions look expensive, and admission refused an unsaturated device.
        window_start = now - self.load_settle_s
        seen += sum(max(0.0, r - max(a, window_start)) for a, r in self._departed.get(device, ())) / self.load_settle_s
        if seen >= 1.0:
            self._cost_per_stream[device] = load / seen
        return load + self._cost_per_stream.get(device, 0.0) * (unseen + 1.0)

    def _usable(self, gpu: _Gpu, exclude: Iterable[int], loads: Dict[str, float]) -> bool:
        if gpu.index in exclude or not gpu.healthy or gpu.info is None:
            return False
        if len(gpu.holders) >= self.max_connections_per_gpu:
            return False
        if self.min_free_memory_gb and gpu.info.free_memory_gb < self.min_free_memory_gb:
            return False
        return not self._overloaded(self._execution_device(gpu), loads)

    def _pick(self, exclude: Iterable[int], loads: Dict[str, float]) -> Optional[_Gpu]:
        exclude = set(exclude)
        candidates = [g for g in self._gpus.values() if self._usable(g, exclude, loads)]
        if not candidates:
            return None
        n = max(self._gpus) + 1
        rr_rank = lambda g: (g.index - self._rr_cursor) % n  # noqa: E731
        if self.policy == "round-robin":
            return min(candidates, key=rr_rank)
        return min(
            candidates,
            key=lambda g: (len(g.holders), -round((g.info.free_memory_gb if g.info else 0) * 2) / 2, rr_rank(g)),
        )

    def _cpu_admits(self, loads: Dict[str, float]) -> bool:
        """CPU fallback: only on a host with no healthy GPU, within the CPU's slots and load cap."""
        if not self.cpu_fallback or any(g.healthy for g in self._gpus.values()):
            return False
        return len(self._cpu_holders) < self.max_cpu_connections and not self._overloaded(CPU_DEVICE, loads)

    def _admit(self, exclude: Iterable[int], loads: Dict[str, float]) -> "Optional[_Gpu | str]":
        """THE admission rule: the GPU a new connection gets, `_CPU`, or None (refused)."""
        gpu = self._pick(exclude, loads)
        if gpu is not None:
            return gpu
        return _CPU if self._cpu_admits(loads) else None

    # -- the public API ------------------------------------------------------------
    @property
    def gpu_count(self) -> int:
        return len(self._gpus)

    def acquire(self, connection_id: str, exclude: Iterable[int] = ()) -> Slot:
        """A slot now, or NoCapacity. `exclude` skips GPUs (a retry after a failed engine build)."""
        readings, loads = self._read_devices(), self._read_loads()
        with self._lock:
            self._apply(readings)
            if connection_id in self._slots:
                return self._slots[connection_id]
            choice = self._admit(exclude, loads)
            if choice is None:
                reason = "No GPU available"  # the close reason clients already know, whatever the limit
                self.refusals[reason] = self.refusals.get(reason, 0) + 1
                raise NoCapacity(reason)
            self._admitted_at[connection_id] = self._clock()
            if choice == _CPU:
                self._cpu_holders.append(connection_id)
                slot = Slot(connection_id, None, CPU_DEVICE)
                self._slots[connection_id] = slot
                logger.info("Allocated CPU to connection %s (load %d/%d)", connection_id, len(self._cpu_holders), self.max_cpu_connections,
                            extra={"connection_id": connection_id, "device": slot.label})
                return slot
            gpu = choice
            assert isinstance(gpu, _Gpu)
            self._rr_cursor = gpu.index + 1
            gpu.holders.append(connection_id)
            slot = Slot(connection_id, gpu.index, self._execution_device(gpu), simulated=bool(gpu.info and gpu.info.simulated))
            self._slots[connection_id] = slot
            info = gpu.info
            logger.info(
                "Allocated %s to connection %s (load %d/%d, memory %.1f/%.2f GB)",
                slot.label, connection_id, len(gpu.holders), self.max_connections_per_gpu,
                info.used_memory_gb if info else 0.0, info.total_memory_gb if info else 0.0,
                extra={"connection_id": connection_id, "device": slot.label},
            )
            return slot

    def has_free_slot(self) -> bool:
        """Whether `acquire` would give a new connection a slot now (what `/ready` answers)."""
        readings, loads = self._read_devices(), self._read_loads()
        with self._lock:
            self._apply(readings)
            return self._admit((), loads) is not None

    async def acquire_waiting(
        self, connection_id: str, timeout_s: float, on_queued: Optional[Callable[[int], object]] = None
    ) -> Slot:
        """Wait up to `timeout_s` for a slot, first come first served."""
        if not self._waiters:
            try:
                return self.acquire(connection_id)
            except NoCapacity:
                if timeout_s <= 0:
                    raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiter: asyncio.Future = loop.create_future()
        self._waiters.append(waiter)
        reported = 0
        try:
            while True:
                position = self._waiters.index(waiter) + 1
                if on_queued is not None and position != reported:
                    reported = position
                    result = on_queued(position)
                    if asyncio.iscoroutine(result):
                        await result
                if position == 1:
                    try:
                        return self.acquire(connection_id)
                    except NoCapacity:
                        pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NoCapacity("No GPU available")
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), timeout=min(remaining, 1.0))
                except asyncio.TimeoutError:
                    pass
                if waiter.done():
                    waiter = self._renew(waiter, loop)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._wake_first()

    def _renew(self, old: asyncio.Future, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        new = loop.create_future()
        self._waiters[self._waiters.index(old)] = new
        return new

    def _wake_first(self) -> None:
        if self._waiters:
            first = self._waiters[0]
            if not first.done():
                first.get_loop().call_soon_threadsafe(lambda f=first: f.done() or f.set_result(True))

    def release(self, slot_or_id: "Slot | str") -> bool:
        """Give a slot back; idempotent (False when nothing was held)."""
        connection_id = slot_or_id if isinstance(slot_or_id, str) else slot_or_id.connection_id
        with self._lock:
            slot = self._slots.pop(connection_id, None)
            admitted_at = self._admitted_at.pop(connection_id, None)
            if slot is None:
                return False
            if admitted_at is not None:  # its compute stays in the load window for a while (projected_load)
                now = self._clock()  # kept only while in the window, admission on or off: bounded
                recent = [(a, r) for a, r in self._departed.get(slot.device, ()) if r > now - self.load_settle_s]
                self._departed[slot.device] = recent + [(admitted_at, now)]
            if slot.gpu_id is None:
                self._cpu_holders.remove(connection_id)
                remaining = len(self._cpu_holders)
            else:
                self._gpus[slot.gpu_id].holders.remove(connection_id)
                remaining = len(self._gpus[slot.gpu_id].holders)
            logger.info("Released %s from connection %s (remaining %d)", slot.label, connection_id, remaining,
                        extra={"connection_id": connection_id, "device": slot.label})
        self._wake_first()
        return True

    def mark_unhealthy(self, gpu_id: int, reason: str) -> None:
        with self._lock:
            if gpu_id in self._gpus:
                self._set_unhealthy(self._gpus[gpu_id], reason)

    def report_fault(self, device: str, reason: str) -> None:
        """`DeviceHealth`: inference on `device` failed in a way that means the device is broken.

        Takes every GPU that executes on `device` out of rotation (simulated GPUs execute on the CPU,
        which is never taken out)."""
        if device == CPU_DEVICE:
            logger.error("device fault reported on the CPU (not taken out of rotation): %s", reason)
            return
        with self._lock:
            for gpu in self._gpus.values():
                if self._execution_device(gpu) == device:
                    self._set_unhealthy(gpu, reason)

    def held(self) -> int:
        with self._lock:
            return len(self._slots)

    def execution_devices(self) -> List[str]:
        """Devices engines run on: each real GPU, plus the CPU (no GPUs, simulated ones, or CPU fallback)."""
        with self._lock:
            devices = {self._execution_device(g) for g in self._gpus.values()}
        if not devices or self.cpu_fallback and not any(d.startswith("cuda") for d in devices):
            devices.add(CPU_DEVICE)
        return sorted(devices)

    def view(self) -> ManagerView:
        """A consistent copy of the state, with fresh NVML readings (formatted by `gpu/report.py`)."""
        self.refresh()
        with self._lock:
            return ManagerView(
                gpus=tuple(GpuView(g.index, g.info, tuple(g.holders), g.healthy, g.unhealthy_reason) for g in self._gpus.values()),
                cpu_holders=tuple(self._cpu_holders), held=len(self._slots), queued=len(self._waiters),
                max_connections_per_gpu=self.max_connections_per_gpu, max_cpu_connections=self.max_cpu_connections,
                cpu_fallback=self.cpu_fallback,
            )

    def snapshot(self) -> dict:
        """`/gpu-status` body (PROTOCOL.md); the formatting lives in `gpu/report.py`."""
        from whisperlivekit.gpu.report import gpu_status

        return gpu_status(self.view())
