"""The order in which a model sees its training records.

Both backends draw batches through this one function, so a batched ensemble and K
sequential trainings with the same seeds see exactly the same data in the same order.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["epoch_batches", "steps_per_epoch"]


def steps_per_epoch(subset_size: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last batch may be smaller)."""
    return -(-subset_size // batch_size)


def epoch_batches(
    subset: NDArray[np.intp], *, epoch: int, seed: int, batch_size: int
) -> list[NDArray[np.intp]]:
    """The batches (record indices) of one epoch: a seeded shuffle of ``subset``.

    >>> [b.tolist() for b in epoch_batches(np.arange(5), epoch=0, seed=1, batch_size=2)]
    [[4, 0], [1, 2], [3]]
    """
    order = np.random.default_rng([seed, epoch]).permutation(subset)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
