"""Model factories for the Ray backend tests, at module level so Ray workers import them.

`crashing_model` kills its worker process (``os._exit(1)``, as an out-of-memory kill or a
preempted node would) in the middle of training, once: the first attempt creates a marker
file, a retried attempt finds it and trains normally. It also logs, per worker call, the
seed it was built with, so a test can count which reference models a run trained.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tiny_audit import SubclassedBatchNorm1d, make_model
from torch import nn


class CrashOnce(nn.Module):
    """`make_model`'s network; with a ``marker``, its training forward exits the process
    at step ``crash_at_step`` unless the marker file exists (then it is created first).
    It always counts its training steps: Python state, so every CrashOnce (armed or not)
    trains on the general batched path, and a disturbed run's groups train on the same
    path as an undisturbed run's (the MLP fast path would round differently)."""

    def __init__(self, net: nn.Module, marker: str, crash_at_step: int) -> None:
        super().__init__()
        self.net = net
        self.marker = marker
        self.crash_at_step = crash_at_step
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
        due = self.steps >= self.crash_at_step and self.training
        if self.marker and due and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()), encoding="utf-8")
            os._exit(1)
        return self.net(x)  # type: ignore[no-any-return]


def crashing_model(
    *,
    marker: str = "",
    crash_seed: int = -1,
    driver_pid: int = -1,
    calls: str = "",
    crash_at_step: int = 3,
) -> nn.Module:
    """A `CrashOnce` model, armed when built on a worker (a process other than
    ``driver_pid``) with the seed ``crash_seed``; each worker call appends its seed to the
    file ``calls``."""
    seed = torch.initial_seed()  # init_model seeds torch right before calling the factory
    on_worker = os.getpid() != driver_pid
    if calls and on_worker:
        with open(calls, "a", encoding="utf-8") as handle:
            handle.write(f"{seed}\n")
    armed = bool(marker) and on_worker and seed == crash_seed
    return CrashOnce(make_model(), marker if armed else "", crash_at_step)


def batchnorm_model() -> nn.Module:
    """A model the batched backend cannot train (a BatchNorm subclass): one model per
    task."""
    return nn.Sequential(nn.Linear(6, 16), SubclassedBatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def dropout_model() -> nn.Module:
    """Dropout draws per-group random streams: groups must match the local ones."""
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
