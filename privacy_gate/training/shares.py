"""Reference models split across the processes of a multi-process (DDP) fit.

The K reference models are independent trainings, so the ranks of a distributed job can
train them side by side with no communication until the scores are gathered. Each rank
prepares the audit exactly as `run_audit` does (`prepared.prepare_audit`: the same plan,
seeds and store key) and trains its share: whole batched groups (the backend's
`round_multiple`), dealt round-robin, so every model trains in the same group, with the
same random streams, as in one process. Rank zero then stores the gathered scores and
runs `run_audit`, which finds every model done: the audit equals the single-process
audit with the same seed, figure for figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.errors import InputError
from privacy_gate.training.audit import keeps_user_rng
from privacy_gate.training.backends import BACKENDS, BackendSpec
from privacy_gate.training.data import AuditData
from privacy_gate.training.device import AUTO
from privacy_gate.training.prepared import PreparedAudit, prepare_audit
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    Augmentation,
    TrainFunction,
    TrainingBackend,
    reference_name,
)
from privacy_gate.training.sequential import ModelFactory

__all__ = ["RankShare", "share_of", "store_shares", "train_share"]


@dataclass(frozen=True)
class RankShare:
    """What one rank sends to rank zero: its models' scores, and how many of them it
    trained now (the others were in its store: a resumed audit)."""

    scores: dict[int, NDArray[np.float64]]
    trained_now: int


def share_of(n_models: int, group: int, rank: int, world_size: int) -> list[int]:
    """The models rank ``rank`` of ``world_size`` trains: whole groups of ``group``
    models (0..g-1, g..2g-1, ...), dealt round-robin.

    >>> share_of(6, 2, 0, 2), share_of(6, 2, 1, 2)
    ([0, 1, 4, 5], [2, 3])
    """
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is outside a world of {world_size} processes")
    starts = range(0, n_models, group)
    return [
        k
        for g, start in enumerate(starts)
        if g % world_size == rank
        for k in range(start, min(start + group, n_models))
    ]


def _prepared(factory: ModelFactory, data: AuditData, options: Mapping[str, Any]) -> PreparedAudit:
    prepared = prepare_audit(factory, data, owner="a multi-process audit", **options)
    if prepared.adaptive is not None:
        raise InputError(
            "reference_models 'auto' (an adaptive audit) is not supported under multi-process "
            "training: every look would need the ranks again. HINT: give a fixed even K."
        )
    return prepared


@keeps_user_rng
def train_share(
    factory: ModelFactory,
    data: AuditData,
    *,
    recipe: Recipe,
    reference_models: int,
    backend: TrainingBackend | str,
    seed: int,
    rank: int,
    world_size: int,
    candidate: nn.Module | None = None,
    out_dir: str | Path | None = None,
    augmentations: Sequence[Augmentation] = (),
    train_fn: TrainFunction | None = None,
    cache_key: Mapping[str, Any] | None = None,
    device: str | torch.device | None = AUTO,
) -> RankShare:
    """Train (or resume) this rank's share of the reference models `run_audit` with the
    same arguments would train, on ``device``."""
    prepared = _prepared(
        factory,
        data,
        {
            "recipe": recipe, "reference_models": reference_models, "backend": backend,
            "seed": seed, "candidate": candidate, "out_dir": out_dir,
            "augmentations": augmentations, "train_fn": train_fn, "cache_key": cache_key,
            "device": device,
        },
    )  # fmt: skip
    trainer = prepared.trainer
    group = BACKENDS.get(trainer.name, BackendSpec()).round_multiple(trainer)
    share = share_of(prepared.n_planned, group, rank, world_size)
    job = replace(prepared.job, share=frozenset(share))
    todo = job.todo()
    if todo:
        trainer.train(job)
    scores = {k: job.store.load(reference_name(k)) for k in share}
    missing = [k for k, value in scores.items() if value is None]
    if missing:
        raise InputError(f"rank {rank} finished without the scores of models {missing}")
    return RankShare({k: v for k, v in scores.items() if v is not None}, len(todo))


def store_shares(
    factory: ModelFactory, data: AuditData, shares: Sequence[RankShare], **options: Any
) -> dict[str, list[int]]:
    """On rank zero: save the scores every rank sent (``shares``, by rank) into the store
    `run_audit` with these ``options`` reads. Every planned model must be in exactly one
    share. Returns the report's account: models and models trained now, by rank."""
    prepared = _prepared(factory, data, options)
    seen: dict[int, int] = {}
    for rank, share in enumerate(shares):
        for k, scores in share.scores.items():
            if k in seen:
                raise InputError(f"model {k} came from ranks {seen[k]} and {rank}")
            seen[k] = rank
            prepared.job.store.save(reference_name(k), np.asarray(scores, dtype=np.float64))
    absent = sorted(set(range(prepared.n_planned)) - set(seen))
    if absent:
        raise InputError(f"no rank trained reference models {absent}")
    return {
        "reference_models_by_rank": [len(share.scores) for share in shares],
        "trained_now_by_rank": [share.trained_now for share in shares],
    }
