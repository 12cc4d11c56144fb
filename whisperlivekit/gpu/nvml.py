"""Real device facts through NVML, and a simulated probe for machines without GPUs.

Both implement `GpuProbe`. NVML numbers are for the whole device (all processes),
which is what admission and `/gpu-status` must reflect.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Dict, Optional, Protocol, Set

logger = logging.getLogger(__name__)
GB = 1024**3


class ProbeError(RuntimeError):
    """Reading a device failed (driver error, GPU fallen off the bus)."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_memory_gb: float
    used_memory_gb: float
    free_memory_gb: float
    utilization_percent: Optional[float] = None
    temperature_c: Optional[float] = None
    simulated: bool = False


class GpuProbe(Protocol):
    def count(self) -> int: ...
    def read(self, index: int) -> GpuInfo: ...


class NvmlProbe:
    """NVML via `nvidia-ml-py` (imported as `pynvml`); no driver means zero GPUs, not a crash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._count = int(pynvml.nvmlDeviceGetCount())
            self._nvml = pynvml
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
            logger.info("NVML unavailable (%s): no GPUs will be used", exc.__class__.__name__)

    def count(self) -> int:
        return self._count

    def read(self, index: int) -> GpuInfo:
        if self._nvml is None:
            raise ProbeError("NVML is not initialised")
        nvml = self._nvml
        with self._lock:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except nvml.NVMLError:
                    utilization = None
                try:
                    temperature = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
                except nvml.NVMLError:
                    temperature = None
            except nvml.NVMLError as exc:
                raise ProbeError(f"NVML error on GPU {index}: {exc}") from exc
        return GpuInfo(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name),
            total_memory_gb=round(memory.total / GB, 2),
            used_memory_gb=round(memory.used / GB, 2),
            free_memory_gb=round(memory.free / GB, 2),
            utilization_percent=utilization,
            temperature_c=temperature,
        )


class SimulatedProbe:
    """A pretend multi-GPU host for trying the allocator on a laptop and for tests.

    Engines on simulated GPUs run on the CPU; memory numbers are what the test or
    user sets (`set_free_memory`), and `fail(index)` makes reads raise like a
    broken driver would.
    """

    def __init__(self, count: int, name: str = "Simulated Tesla T4", total_memory_gb: float = 15.75) -> None:
        self._lock = threading.Lock()
        self._infos: Dict[int, GpuInfo] = {
            i: GpuInfo(i, name, total_memory_gb, 0.45, round(total_memory_gb - 0.45, 2), 0.0, 40.0, simulated=True)
            for i in range(count)
        }
        self._failing: Set[int] = set()

    def count(self) -> int:
        return len(self._infos)

    def read(self, index: int) -> GpuInfo:
        with self._lock:
            if index in self._failing:
                raise ProbeError(f"simulated NVML error on GPU {index}")
            return self._infos[index]

    def set_free_memory(self, index: int, free_gb: float) -> None:
        with self._lock:
            info = self._infos[index]
            self._infos[index] = replace(info, free_memory_gb=free_gb, used_memory_gb=round(info.total_memory_gb - free_gb, 2))

    def fail(self, index: int, failing: bool = True) -> None:
        with self._lock:
            (self._failing.add if failing else self._failing.discard)(index)
