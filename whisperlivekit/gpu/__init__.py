"""GPU discovery (NVML, or a simulated probe) and the per-connection slot allocator."""
