"""Small valid reference-model arrays for the input tests."""

from __future__ import annotations

import numpy as np

K, N = 4, 6


def balanced_arrays(k: int = K, n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and masks with every record IN for exactly k/2 models."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((k, n), dtype=bool)
    for i in range(n):
        masks[rng.permutation(k)[: k // 2], i] = True
    return rng.standard_normal((k, n)), masks
