"""Who holds which GPU: the process's one slot allocator.

Every `/asr` connection asks for a `Slot` before any audio is accepted and gives
it back in `finally`. The manager knows devices, capacity and holders; it never
touches models. It is guarded by one `threading.Lock` (device workers call
`mark_unhealthy` from their threads) and offers an async FIFO wait for
`--queue-timeout`.

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
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from whisperlivekit.errors import NoCapacity
from whisperlivekit.gpu.nvml import GpuInfo, GpuProbe, ProbeError

logger = logging.getLogger(__name__)

CPU_DEVICE = "cpu"


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
        load_of: Optional[Callable[[str], float]] = None,
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
        self.load_of = load_of
        self.simulated = bool(chosen) and all(self._read(g) is None or self._gpus[g].info.simulated for g in chosen)  # type: ignore[union-attr]
        self._rr_cursor = 0
        self._waiters: List[asyncio.Future] = []
        self.refusals: Dict[str, int] = {}

    # -- reading devices -----------------------------------------------------------
    def _read(self, index: int) -> Optional[GpuInfo]:
        """Fresh NVML facts; an error marks the GPU unhealthy (caller holds no lock or the lock)."""
        gpu = self._gpus[index]
        try:
            gpu.info = self._probe.read(index)
        except ProbeError as exc:
            self._set_unhealthy(gpu, str(exc))
            return None
        return gpu.info

    def _set_unhealthy(self, gpu: _Gpu, reason: str) -> None:
        if gpu.healthy:
            logger.error("GPU %d marked unhealthy: %s (retry in %.0f s)", gpu.index, reason, self.unhealthy_backoff_s)
        gpu.healthy = False
        gpu.unhealthy_reason = reason
        gpu.retry_at = self._clock() + self.unhealthy_backoff_s

    def _execution_device(self, gpu: _Gpu) -> str:
        return CPU_DEVICE if gpu.info is not None and gpu.info.simulated else f"cuda:{gpu.index}"

    def _usable(self, gpu: _Gpu, exclude: Iterable[int]) -> bool:
        if gpu.index in exclude or len(gpu.holders) >= self.max_connections_per_gpu:
            return False
        if not gpu.healthy:
            if self._clock() < gpu.retry_at:
                return False
            gpu.healthy = True  # back-off over: re-probe below
            logger.info("GPU %d: re-probing after back-off", gpu.index)
        info = self._read(gpu.index)
        if info is None:
            return False
        if self.min_free_memory_gb and info.free_memory_gb < self.min_free_memory_gb:
            return False
        if self.max_realtime_load and self.load_of is not None:
            if self.load_of(self._execution_device(gpu)) >= self.max_realtime_load:
                return False
        return True

    def _pick(self, exclude: Iterable[int]) -> Optional[_Gpu]:
        exclude = set(exclude)
        candidates = [g for g in self._gpus.values() if self._usable(g, exclude)]
        if not candidates:
            return None
        n = max(self._gpus) + 1
        rr_rank = lambda g: (g.index - self._rr_cursor) % n  # noqa: E731
        if self.policy == "round-robin":
            chosen = min(candidates, key=rr_rank)
        else:
            chosen = min(
                candidates,
                key=lambda g: (len(g.holders), -round((g.info.free_memory_gb if g.info else 0) * 2) / 2, rr_rank(g)),
            )
        self._rr_cursor = chosen.index + 1
        return chosen

    # -- the public API ------------------------------------------------------------
    @property
    def gpu_count(self) -> int:
        return len(self._gpus)

    def acquire(self, connection_id: str, exclude: Iterable[int] = ()) -> Slot:
        """A slot now, or NoCapacity. `exclude` skips GPUs (a retry after a failed engine build)."""
        with self._lock:
            if connection_id in self._slots:
                return self._slots[connection_id]
            gpu = self._pick(exclude)
            if gpu is not None:
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
            healthy = [g for g in self._gpus.values() if g.healthy]
            if self.cpu_fallback and not healthy:
                if len(self._cpu_holders) < self.max_cpu_connections and not (
                    self.max_realtime_load and self.load_of and self.load_of(CPU_DEVICE) >= self.max_realtime_load
                ):
                    self._cpu_holders.append(connection_id)
                    slot = Slot(connection_id, None, CPU_DEVICE)
                    self._slots[connection_id] = slot
                    logger.info("Allocated CPU to connection %s (load %d/%d)", connection_id, len(self._cpu_holders), self.max_cpu_connections,
                                extra={"connection_id": connection_id, "device": slot.label})
                    return slot
            reason = "No GPU available"
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
            raise NoCapacity(reason)

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
            if slot is None:
                return False
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

    def held(self) -> int:
        with self._lock:
            return len(self._slots)

    def has_free_slot(self) -> bool:
        with self._lock:
            if any(self._usable(g, ()) for g in self._gpus.values()):
                return True
            healthy = [g for g in self._gpus.values() if g.healthy]
            return self.cpu_fallback and not healthy and len(self._cpu_holders) < self.max_cpu_connections

    def snapshot(self) -> dict:
        """`/gpu-status` body (PROTOCOL.md), with fresh NVML readings."""
        with self._lock:
            gpus = []
            for gpu in self._gpus.values():
                if gpu.healthy or self._clock() >= gpu.retry_at:
                    if self._read(gpu.index) is not None and not gpu.healthy and self._clock() >= gpu.retry_at:
                        gpu.healthy = True
                info = gpu.info
                entry = {
                    "gpu_id": gpu.index,
                    "name": info.name if info else "unknown",
                    "healthy": gpu.healthy,
                    "simulated": bool(info and info.simulated),
                    "active_connections": len(gpu.holders),
                    "max_connections": self.max_connections_per_gpu,
                    "connection_ids": list(gpu.holders),
                    "total_memory_gb": info.total_memory_gb if info else None,
                    "used_memory_gb": info.used_memory_gb if info else None,
                    "free_memory_gb": info.free_memory_gb if info else None,
                    "memory_used_percent": round(100 * info.used_memory_gb / info.total_memory_gb, 1) if info and info.total_memory_gb else None,
                    "utilization_percent": info.utilization_percent if info else None,
                    "temperature_c": info.temperature_c if info else None,
                }
                if not gpu.healthy:
                    entry["unhealthy_reason"] = gpu.unhealthy_reason
                gpus.append(entry)
            return {
                "total_gpus": len(self._gpus),
                "healthy_gpus": sum(1 for g in self._gpus.values() if g.healthy),
                "total_connections": len(self._slots),
                "max_connections_per_gpu": self.max_connections_per_gpu,
                "cpu": {"active_connections": len(self._cpu_holders), "max_connections": self.max_cpu_connections,
                        "connection_ids": list(self._cpu_holders), "fallback": self.cpu_fallback},
                "queued": len(self._waiters),
                "gpus": gpus,
            }

    def table(self) -> List[str]:
        """One start-up log line per GPU."""
        lines = []
        for entry in self.snapshot()["gpus"]:
            lines.append(
                f"GPU {entry['gpu_id']}: {entry['name']}{' (simulated)' if entry['simulated'] else ''} "
                f"connections {entry['active_connections']}/{entry['max_connections']}, "
                f"memory {entry['used_memory_gb']}/{entry['total_memory_gb']} GB used, {entry['free_memory_gb']} GB free"
                + ("" if entry["healthy"] else f", UNHEALTHY: {entry.get('unhealthy_reason')}")
            )
        return lines
