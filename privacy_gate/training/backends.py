"""The training backends behind one protocol (`reference.TrainingBackend`), and the
registry that turns audit.yaml's ``backend:`` name and its options into one.

- `SequentialBackend`: one model at a time with the recipe's loop (or the caller's
  ``train_fn``), optionally in worker processes;
- `BatchedBackend`: fixed groups of models as batched ensembles (`training.batched`);
- `AutoBackend`: batched when the model and recipe allow it, else sequential, with the
  reason in the report;
- `privacy_gate.training.ray_backend.RayBackend`: the same work as Ray tasks.

Every backend writes each finished model's scores into the job's store at once, so an
interrupted audit resumes with what is done, whichever backend trained it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

from privacy_gate.errors import InputError, coerce_choice
from privacy_gate.training.progress import Progress
from privacy_gate.training.ray_backend import RayBackend, RayOptions
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    DEFAULT_GROUP_SIZE,
    Backend,
    ReferenceJob,
    TrainingBackend,
    recipe_fallback,
    reference_name,
    train_and_score,
)
from privacy_gate.training.scoring import score_model
from privacy_gate.training.steps import ModelFactory, init_model

__all__ = [
    "BACKENDS",
    "AutoBackend",
    "BatchedBackend",
    "SequentialBackend",
    "choose_backend",
    "make_backend",
    "train_reference_models",
]

_LOG = logging.getLogger("privacy_gate.training")


def _worker_init() -> None:
    torch.set_num_threads(1)


def _train_sequential(job: ReferenceJob, todo: list[int], progress: Progress, workers: int) -> None:
    inputs, labels = job.data.pool()
    plan = job.plan
    jobs = {
        k: (job.factory, inputs, labels, plan.subset(k), job.recipe, plan.seeds[k],
            f"reference model {k}", job.data.task, job.augmentations)
        for k in todo
    }  # fmt: skip
    if job.train_fn is not None or workers <= 1:
        for k, args in jobs.items():
            scores = train_and_score(*args, train_fn=job.train_fn, device=job.device)
            job.store.save(reference_name(k), scores)
            progress.update()
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        futures = {
            pool.submit(train_and_score, *args, device=job.device): k for k, args in jobs.items()
        }
        for future in as_completed(futures):  # each is saved as soon as it finishes
            job.store.save(reference_name(futures[future]), future.result())
            progress.update()


def _train_batched(job: ReferenceJob, todo: list[int], progress: Progress, group_size: int) -> None:
    """Train fixed groups of models (0..g-1, g..2g-1, ...) as batched ensembles.

    Groups are fixed whatever is already done, and a group with any missing model is
    retrained whole, so a resumed audit trains exactly the groups an uninterrupted one
    would, with the same random streams (dropout masks come from the group's seeds).
    """
    from privacy_gate.training.batched import train_batched

    inputs, labels = job.data.pool()
    plan = job.plan
    missing = set(todo)
    for start in range(0, plan.n_models, group_size):
        group = list(range(start, min(start + group_size, plan.n_models)))
        if not missing.intersection(group):
            continue
        models = train_batched(
            job.factory,
            inputs,
            labels,
            [plan.subset(k) for k in group],
            job.recipe,
            seeds=[plan.seeds[k] for k in group],
            device=job.device,
        )
        for k, model in zip(group, models, strict=True):
            job.store.save(
                reference_name(k),
                score_model(model, inputs, labels, job.data.task, augmentations=job.augmentations),
            )
        progress.update(len(missing.intersection(group)))


def choose_backend(
    factory: ModelFactory, backend: Backend, recipe: Recipe | None = None
) -> tuple[Backend, str | None]:
    """The backend to use, and why batching was not (None when it was)."""
    if backend is Backend.SEQUENTIAL:
        return backend, None
    fallback = None if recipe is None else recipe_fallback(recipe)
    if fallback is not None:
        if backend is Backend.BATCHED:
            raise InputError(
                f"backend 'batched' cannot train this recipe: {fallback.value}. HINT: use "
                "backend 'auto' or 'sequential'."
            )
        return Backend.SEQUENTIAL, fallback.value
    from privacy_gate.training.batched import batching_problem

    problem = batching_problem(init_model(factory, 0))
    if problem is None:
        return Backend.BATCHED, None
    if backend is Backend.BATCHED:
        raise InputError(
            f"backend 'batched' cannot train this model: {problem}. HINT: use "
            "backend 'auto' or 'sequential'."
        )
    _LOG.warning("Training reference models one at a time: %s", problem)
    return Backend.SEQUENTIAL, problem


def _train_locally(
    job: ReferenceJob, asked: Backend, *, workers: int, group_size: int
) -> dict[str, Any]:
    """The local backends: batched where ``asked`` and the model allow, else sequential."""
    todo = job.todo()
    n_models = job.plan.n_models
    used, reason = choose_backend(job.factory, asked, job.recipe)
    started = time.perf_counter()
    with Progress(n_models, initial=n_models - len(todo)) as progress:
        if todo and used is Backend.BATCHED:
            from privacy_gate.training.batched import BatchingUnsupported

            try:
                _train_batched(job, todo, progress, group_size)
            except BatchingUnsupported as exc:
                if asked is Backend.BATCHED:
                    raise InputError(f"backend 'batched' cannot train this model: {exc}") from None
                _LOG.warning("Training reference models one at a time: %s", exc)
                used, reason = Backend.SEQUENTIAL, str(exc)
        remaining = job.todo()
        if remaining and used is Backend.SEQUENTIAL:
            _train_sequential(job, remaining, progress, workers)
    return {
        "backend": used.value,
        "fallback_reason": reason,
        "trained_now": len(todo),
        "resumed": n_models - len(todo),
        "training_seconds": round(time.perf_counter() - started, 3),
        "device": str(job.device),
    }


@dataclass(frozen=True)
class SequentialBackend:
    """One model at a time (``workers`` > 1: in that many spawned processes; the factory
    must pickle). The only backend that takes a ``train_fn`` (e.g. a Lightning Trainer)."""

    workers: int = 1
    kind: ClassVar[Backend] = Backend.SEQUENTIAL

    def train(self, job: ReferenceJob) -> dict[str, Any]:
        return _train_locally(job, self.kind, workers=self.workers, group_size=1)


@dataclass(frozen=True)
class BatchedBackend:
    """Fixed groups of ``group_size`` models as batched ensembles; a model or recipe that
    cannot be batched is an error (use `AutoBackend` to fall back)."""

    group_size: int = DEFAULT_GROUP_SIZE
    kind: ClassVar[Backend] = Backend.BATCHED

    def train(self, job: ReferenceJob) -> dict[str, Any]:
        return _train_locally(job, self.kind, workers=1, group_size=self.group_size)


@dataclass(frozen=True)
class AutoBackend:
    """Batched when the model and recipe allow it, else sequential (the reason goes into
    the report's ``audit.training.fallback_reason``)."""

    group_size: int = DEFAULT_GROUP_SIZE
    workers: int = 1
    kind: ClassVar[Backend] = Backend.AUTO

    def train(self, job: ReferenceJob) -> dict[str, Any]:
        return _train_locally(job, self.kind, workers=self.workers, group_size=self.group_size)


def _ray(*, ray: RayOptions | None = None, group_size: int = DEFAULT_GROUP_SIZE) -> RayBackend:
    return RayBackend(options=ray or RayOptions(), group_size=group_size)


BACKENDS: dict[Backend, tuple[Callable[..., TrainingBackend], frozenset[str]]] = {
    Backend.AUTO: (AutoBackend, frozenset({"workers", "group_size"})),
    Backend.BATCHED: (BatchedBackend, frozenset({"group_size"})),
    Backend.SEQUENTIAL: (SequentialBackend, frozenset({"workers"})),
    Backend.RAY: (_ray, frozenset({"ray", "group_size"})),
}
"""Backend name -> (builder, the options it takes as keywords), as Opacus registers its
accountants."""


def make_backend(
    backend: TrainingBackend | Backend | str = Backend.AUTO,
    *,
    workers: int | None = None,
    ray: RayOptions | None = None,
    group_size: int | None = None,
) -> TrainingBackend:
    """A `TrainingBackend` from a name and its options (audit.yaml, the Lightning
    callback), or the backend itself. An option the backend does not take is an error:
    it would silently do nothing."""
    if not isinstance(backend, (str, Backend)):
        if workers is not None or ray is not None or group_size is not None:
            raise InputError(
                "Options were given beside a backend object; they travel with the backend. "
                "HINT: e.g. SequentialBackend(workers=4) or RayBackend(RayOptions(...))."
            )
        return backend
    name = coerce_choice(Backend, backend, "backend", "the audit", InputError)
    build, accepted = BACKENDS[name]
    given = {
        option: value
        for option, value in (("workers", workers), ("ray", ray), ("group_size", group_size))
        if value is not None
    }
    unused = sorted(set(given) - accepted - ({"workers"} if workers == 1 else set()))
    if unused:
        hint = (
            "use backend 'ray', or drop the Ray options"
            if "ray" in unused
            else (f"the {name.value} backend takes {sorted(accepted) or 'no options'}")
        )
        raise InputError(
            f"The option(s) {unused} do not apply to the {name.value!r} backend. HINT: {hint}."
        )
    return build(**{option: value for option, value in given.items() if option in accepted})


def train_reference_models(
    job: ReferenceJob, backend: TrainingBackend | Backend | str = Backend.AUTO
) -> tuple[NDArray[np.float64], dict[str, Any]]:
    """Train (or resume) every reference model of ``job``; scores ``(K, N)`` and the
    training provenance."""
    provenance = make_backend(backend).train(job)
    names = [reference_name(k) for k in range(job.plan.n_models)]
    scores = np.stack([job.store.load(name) for name in names])  # type: ignore[misc]
    return scores, provenance
