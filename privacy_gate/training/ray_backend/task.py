"""The Ray task: train one fixed group of reference models on a worker and return their
scores (a pure function of their seeds and subsets, so a retried task returns the same)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.errors import (
    ConfigError,
    InputError,
)
from privacy_gate.signals import Task
from privacy_gate.training.ray_backend.options import _require_ray
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    Augmentation,
    TrainFunction,
    train_and_score,
)
from privacy_gate.training.scoring import score_model
from privacy_gate.training.steps import ModelFactory, init_model


def check_picklable(name: str, value: Any) -> None:
    """Raise a `ConfigError` naming ``name`` when ``value`` cannot be sent to Ray workers.

    Module-level functions and classes are sent by reference (workers import them);
    closures and lambdas by value, with everything they capture.
    """
    _require_ray()
    from ray import cloudpickle

    try:
        cloudpickle.dumps(value)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ConfigError(
            f"The {name} cannot be sent to Ray workers: {type(exc).__name__}: {exc}. HINT: "
            "use a module-level function or class (or a functools.partial of one) whose "
            "arguments pickle; a closure over an open file, a lock, a Trainer or a CUDA "
            "tensor cannot. The 'sequential' and 'batched' backends need no pickling."
        ) from None


# What runs on the workers.


@dataclass(frozen=True)
class _Shared:
    """Everything every task needs, put into the object store once."""

    factory: ModelFactory
    inputs: torch.Tensor
    labels: torch.Tensor
    recipe: Recipe
    task: Task
    augmentations: tuple[Augmentation, ...]
    train_fn: TrainFunction | None


class _OnDevice:
    """``factory()`` moved to ``device`` (the same initial weights: built, then moved)."""

    def __init__(self, factory: ModelFactory, device: str) -> None:
        self.factory, self.device = factory, device

    def __call__(self) -> nn.Module:
        return self.factory().to(self.device)


def _device(num_gpus: float) -> str:
    if num_gpus <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise InputError(
            f"A Ray task asked for num_gpus={num_gpus:g} but torch on the worker sees no "
            "CUDA device. HINT: install a CUDA build of torch on the GPU nodes."
        )
    return "cuda"


def _probe(shared: _Shared, num_gpus: float) -> dict[str, Any]:
    """Runs once on a worker before training: the factory loads and builds a model
    there; returns the worker's versions and free GPU memory."""
    import privacy_gate

    device = _device(num_gpus)
    init_model(shared.factory, 0)
    gpu_free = int(torch.cuda.mem_get_info()[0]) if device == "cuda" else None
    return {
        "torch": torch.__version__,
        "privacy_gate": privacy_gate.__version__,
        "gpu_free": gpu_free,
    }


def _train_group(
    shared: _Shared,
    models: Sequence[int],
    subsets: Sequence[NDArray[np.intp]],
    seeds: Sequence[int],
    batched: bool,
    threads: int,
    num_gpus: float,
) -> tuple[list[NDArray[np.float64]], str | None]:
    """One task: train the group's models, return their scores ``(n_records,)`` each
    (and why batching was given up, when it was). Pure in its arguments: a re-run
    returns the same scores."""
    torch.set_num_threads(threads)
    subsets = [np.array(subset) for subset in subsets]  # writable (Ray's are read-only)

    def one_at_a_time(
        factory: Any, inputs: torch.Tensor, labels: torch.Tensor
    ) -> list[NDArray[np.float64]]:
        return [
            train_and_score(
                factory,
                inputs,
                labels,
                subset,
                shared.recipe,
                seed,
                f"reference model {k}",
                shared.task,
                shared.augmentations,
                train_fn=shared.train_fn,
            )
            for k, subset, seed in zip(models, subsets, seeds, strict=True)
        ]

    if shared.train_fn is not None:  # the caller's loop places the model itself
        return one_at_a_time(shared.factory, shared.inputs, shared.labels), None
    device = _device(num_gpus)
    factory = shared.factory if device == "cpu" else _OnDevice(shared.factory, device)
    inputs, labels = shared.inputs.to(device), shared.labels.to(device)
    reason = None
    if batched:
        from privacy_gate.training.batched import BatchingUnsupported, train_batched

        try:
            trained = train_batched(factory, inputs, labels, subsets, shared.recipe, seeds=seeds)
            return [
                score_model(m, inputs, labels, shared.task, augmentations=shared.augmentations)
                for m in trained
            ], None
        except BatchingUnsupported as exc:  # as the local backend: one at a time instead
            reason = exc.reason
    return one_at_a_time(factory, inputs, labels), reason
