"""The manager's state in words: the `/gpu-status` body (PROTOCOL.md) and the start-up log table.

Formatting only; the facts come from `GpuManager.view()`, taken under its lock.
"""

from __future__ import annotations

from typing import List

from whisperlivekit.gpu.manager import GpuView, ManagerView


def _gpu_entry(gpu: GpuView, max_connections: int) -> dict:
    info = gpu.info
    entry = {
        "gpu_id": gpu.index,
        "name": info.name if info else "unknown",
        "healthy": gpu.healthy,
        "simulated": bool(info and info.simulated),
        "active_connections": len(gpu.holders),
        "max_connections": max_connections,
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
    return entry


def gpu_status(view: ManagerView) -> dict:
    """`/gpu-status` body."""
    return {
        "total_gpus": len(view.gpus),
        "healthy_gpus": sum(1 for g in view.gpus if g.healthy),
        "total_connections": view.held,
        "max_connections_per_gpu": view.max_connections_per_gpu,
        "cpu": {"active_connections": len(view.cpu_holders), "max_connections": view.max_cpu_connections,
                "connection_ids": list(view.cpu_holders), "fallback": view.cpu_fallback},
        "queued": view.queued,
        "gpus": [_gpu_entry(g, view.max_connections_per_gpu) for g in view.gpus],
    }


def startup_lines(view: ManagerView) -> List[str]:
    """One start-up log line per GPU (or one saying engines run on the CPU)."""
    lines = []
    for entry in gpu_status(view)["gpus"]:
        lines.append(
            f"GPU {entry['gpu_id']}: {entry['name']}{' (simulated)' if entry['simulated'] else ''} "
            f"connections {entry['active_connections']}/{entry['max_connections']}, "
            f"memory {entry['used_memory_gb']}/{entry['total_memory_gb']} GB used, {entry['free_memory_gb']} GB free"
            + ("" if entry["healthy"] else f", UNHEALTHY: {entry.get('unhealthy_reason')}")
        )
    return lines or ["no GPUs: engines run on the CPU"]
