"""What the benchmarks share about timing on a device: wait for queued GPU work before
reading the clock (CUDA kernels run asynchronously)."""

from __future__ import annotations

import torch


def synchronise(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
