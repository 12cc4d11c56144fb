"""Giving a PyTorch backend's GPU memory back when it closes (shared by every torch-based backend)."""

from __future__ import annotations


def release_cuda_cache(device: str) -> None:
    """After a backend dropped its model: return PyTorch's cached blocks, so another model fits on the GPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
