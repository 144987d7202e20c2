"""The ragged schedule: which rows each model sees at each step of an epoch, in the order
`sequential.train_one` would, padded with weight-0 rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from privacy_gate.training.data_order import epoch_batches


@dataclass
class _EpochPlan:
    """One epoch of all models as dense tables, built once so that a step only slices.

    ``W`` (the padded batch width) is the batch size, or the largest subset when every
    subset is smaller than one batch.
    """

    index: torch.Tensor  # (S, K, W) int64 record indices (padding repeats a real record)
    weight: torch.Tensor  # (S, K, W) 1.0 for real rows, 0.0 for padding
    count: torch.Tensor  # (S, K) real rows per model, at least 1 (no 0/0 for idle models)
    active: torch.Tensor  # (S, K) bool: the model has a batch, so takes a step
    all_active: list[bool]  # per step: no model idle (nothing to mask)
    last_step: NDArray[np.intp]  # (K,) the step at which each model ends the epoch


def _plan_epoch(
    subsets: Sequence[NDArray[np.intp]],
    seeds: Sequence[int],
    epoch: int,
    batch_size: int,
    device: torch.device,
) -> _EpochPlan:
    """Padded batch tables of one epoch, from the very batches `train_one` draws."""
    orders = [
        np.concatenate(epoch_batches(s, epoch=epoch, seed=seed, batch_size=batch_size))
        for s, seed in zip(subsets, seeds, strict=True)
    ]
    lengths = np.array([len(o) for o in orders], dtype=np.intp)
    steps = -(-lengths // batch_size)
    n_steps, width = int(steps.max()), min(batch_size, int(lengths.max()))
    step = np.arange(n_steps)[:, None]
    position = step * batch_size + np.arange(width)[None, :]  # (S, W) place in the order
    index = np.empty((n_steps, len(orders), width), dtype=np.int64)
    for k, order in enumerate(orders):
        # Padding repeats the first record of the model's own (last) batch: a record it
        # really trains on, so padded rows stay finite whenever its real rows are.
        first = np.minimum(step, steps[k] - 1) * batch_size
        index[:, k] = order[np.where(position < lengths[k], position, first)]
    real = position[:, None, :] < lengths[None, :, None]  # (S, K, W)
    counts = real.sum(axis=2)
    return _EpochPlan(
        index=torch.from_numpy(index).to(device),
        weight=torch.from_numpy(real.astype(np.float32)).to(device),
        count=torch.from_numpy(np.maximum(counts, 1).astype(np.float32)).to(device),
        active=torch.from_numpy(counts > 0).to(device),
        all_active=(counts > 0).all(axis=1).tolist(),
        last_step=steps - 1,
    )


def _step_groups(steps: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of models with equal steps per epoch (sorted by them)."""
    starts = [k for k in range(len(steps)) if k == 0 or steps[k] != steps[k - 1]]
    return list(zip(starts, [*starts[1:], len(steps)], strict=True))


@dataclass(frozen=True)
class _Order:
    """How the ensemble sorted the caller's models: position ``j`` holds the caller's
    model ``ids[j]``; ``groups`` are the `_StackedOptimizer`'s step groups."""

    ids: list[int]
    groups: list[tuple[int, int]]
