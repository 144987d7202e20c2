"""ECG5000 split in two: one part pretrains the encoder, the other is the audit pool.

The 5,000 beats (`examples.ecg.data.load_beats`) are permuted once with a fixed seed. The
first 2,000 pretrain the encoder on a binary task (normal beat or not) in
`examples.finetune.pretrain`; the other 3,000 are the fine-tuning data and the audit pool
(1,500 train the candidate, 1,500 are held out), labelled with the five rhythm classes.
The pools are disjoint, so the audit asks only about the fine-tuning records: the
pretraining beats are part of the starting point every reference model shares.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from examples.ecg.data import beat_pool, load_beats
from privacy_gate.training.data import AuditData

__all__ = ["PRETRAIN_BEATS", "load_finetune_pool", "load_pretraining_beats"]

PRETRAIN_BEATS = 2000
_SPLIT_SEED = 2026


def _order() -> NDArray[np.intp]:
    return np.random.default_rng(_SPLIT_SEED).permutation(5000)


def load_pretraining_beats() -> tuple[torch.Tensor, torch.Tensor]:
    """The 2,000 pretraining beats ``(2000, 1, 140)`` and their binary labels (1: not a
    normal beat)."""
    beats, labels = load_beats()
    part = np.sort(_order()[:PRETRAIN_BEATS])
    return torch.from_numpy(beats[part]).unsqueeze(1), torch.from_numpy(labels[part] != 0).long()


def load_finetune_pool(
    seed: int = 0, holdout_fraction: float = 0.5, max_records: int | None = None
) -> AuditData:
    """The other 3,000 beats as the audit pool (five rhythm classes; subgroup ``rhythm``).

    Args:
        seed: the member/held-out split seed.
        holdout_fraction: the share of the pool held out, in (0, 1).
        max_records: keep a random subset of this many pool beats (quick runs, tests).
    """
    beats, labels = load_beats()
    rest = _order()[PRETRAIN_BEATS:]
    rows = rest[np.random.default_rng(seed).permutation(len(rest))]
    return beat_pool(
        beats, labels, rows, holdout_fraction=holdout_fraction, max_records=max_records
    )
