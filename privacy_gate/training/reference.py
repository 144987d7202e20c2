"""One reference model: the plan it trains on, its seed, its store name, and how it is
trained and scored. Every backend (sequential, batched, Ray) builds on these, so they
agree on which model is which and a resumed audit finds what is done."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.training.batched.eligibility import FP16_MIXED_REASON
from privacy_gate.training.data import AuditData
from privacy_gate.training.recipe import Precision, Recipe
from privacy_gate.training.scoring import score_model
from privacy_gate.training.sequential import train_one
from privacy_gate.training.steps import ModelFactory
from privacy_gate.training.store import ScoreStore

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "Augmentation",
    "Fallback",
    "ReferenceJob",
    "TrainFunction",
    "TrainingBackend",
    "TrainingPlan",
    "TrainingRun",
    "derived_seed",
    "recipe_fallback",
    "reference_name",
    "train_and_score",
]

Augmentation = Callable[[torch.Tensor], torch.Tensor]
TrainFunction = Callable[[NDArray[np.intp], int], nn.Module]
"""``train_fn(subset, seed) -> trained model``: trains one model on the pool records
``subset`` (e.g. with a Lightning Trainer), initialised from ``seed``."""


DEFAULT_GROUP_SIZE = 16
"""Models per batched ensemble (and per Ray task of batched models)."""


class Fallback(str, Enum):
    """Why reference models train one at a time although batching was asked or allowed
    (model-specific reasons come from `privacy_gate.training.batched.batching_problem`)."""

    FP16 = FP16_MIXED_REASON


@dataclass(frozen=True)
class TrainingPlan:
    """What the reference models train on and with which seeds."""

    masks: NDArray[np.bool_]  # (n_reference_models, n_records)
    seeds: tuple[int, ...]  # (n_reference_models,)
    seed: int

    @property
    def n_models(self) -> int:
        return int(self.masks.shape[0])

    def subset(self, k: int) -> NDArray[np.intp]:
        return np.flatnonzero(self.masks[k]).astype(np.intp)

    def first(self, k: int) -> TrainingPlan:
        """The plan of the first ``k`` models (an adaptive audit's look)."""
        return TrainingPlan(self.masks[:k], self.seeds[:k], self.seed)


def recipe_fallback(recipe: Recipe) -> Fallback | None:
    """Why the recipe itself (whatever the model) trains one model at a time."""
    if recipe.precision is Precision.FP16_MIXED:
        return Fallback.FP16
    return None


def derived_seed(seed: int, index: int) -> int:
    """An independent 31-bit seed for model ``index`` (-1: the candidate)."""
    sequence = np.random.SeedSequence([seed, index + 1])
    return int(sequence.generate_state(1)[0] & 0x7FFFFFFF)


def reference_name(k: int) -> str:
    """The store name of reference model ``k``'s scores (one place, so every backend and
    a resumed audit agree on it)."""
    return f"reference_{k:04d}"


def train_and_score(
    factory: ModelFactory,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subset: NDArray[np.intp],
    recipe: Recipe,
    seed: int,
    name: str,
    task: Any,
    augmentations: Sequence[Augmentation],
    train_fn: TrainFunction | None = None,
    device: torch.device | None = None,
) -> NDArray[np.float64]:
    """Train one reference model (``train_fn`` or the recipe's loop, on ``device``) and
    score the pool."""
    if train_fn is not None:
        model = train_fn(subset, seed)
    else:
        model = train_one(
            factory, inputs, labels, subset, recipe, seed=seed, model_name=name, device=device
        )
    return score_model(model, inputs, labels, task, augmentations=augmentations)


@dataclass(frozen=True)
class ReferenceJob:
    """What every backend needs to train (or resume) an audit's reference models: the
    candidate's architecture and recipe, the pool, the plan and the store of finished
    models (a backend writes each model's scores there as soon as it is done)."""

    factory: ModelFactory
    data: AuditData
    plan: TrainingPlan
    recipe: Recipe
    store: ScoreStore
    augmentations: Sequence[Augmentation] = ()
    train_fn: TrainFunction | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # recipe loops
    share: frozenset[int] | None = None
    """The models this process trains (a rank's share under multi-process training,
    `privacy_gate.training.shares`); None: every model of the plan."""

    def todo(self) -> list[int]:
        """The reference models of this process's share not yet in the store."""
        return [
            k
            for k in range(self.plan.n_models)
            if (self.share is None or k in self.share) and not self.store.has(reference_name(k))
        ]


@dataclass(frozen=True)
class TrainingRun:
    """What one backend's training did: the report's ``audit.training`` entries that the
    backend knows (`run_audit` adds the recipe, the model and the cache key).

    Attributes:
        backend: the backend that trained (``auto`` reports ``batched`` or ``sequential``).
        fallback_reason: why models trained one at a time though batching was allowed.
        trained_now, resumed: models trained by this call, and found in the store.
        training_seconds: wall time of this call's training.
        details: the backend's own entries, by name (``device``, Ray's ``ray`` section).
    """

    backend: str
    fallback_reason: str | None
    trained_now: int
    resumed: int
    training_seconds: float
    details: Mapping[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        """The entries as the report's ``audit.training`` holds them (details flat)."""
        return {
            "backend": self.backend,
            "fallback_reason": self.fallback_reason,
            "trained_now": self.trained_now,
            "resumed": self.resumed,
            "training_seconds": self.training_seconds,
            **self.details,
        }


class TrainingBackend(Protocol):
    """Trains the reference models of a `ReferenceJob` into its store and says what it
    did (`TrainingRun`). Options that only one backend has (worker processes, a Ray
    cluster) are fields of that backend, not of `run_audit`.
    """

    name: ClassVar[str]

    def train(self, job: ReferenceJob) -> TrainingRun: ...
