"""The backends that train in this process (or in worker processes of this machine):

- `SequentialBackend`: one model at a time with the recipe's loop (or the caller's
  ``train_fn``), optionally in worker processes;
- `BatchedBackend`: fixed groups of models as batched ensembles (`training.batched`);
- `AutoBackend`: batched when the model and recipe allow it, else sequential, with the
  reason in the report.

Every backend writes each finished model's scores into the job's store at once, so an
interrupted audit resumes with what is done, whichever backend trained it.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, ClassVar

import torch

from privacy_gate.errors import ConfigError, InputError, integer_at_least
from privacy_gate.training.backends.registry import BackendSpec, FitPlan, OptionParser
from privacy_gate.training.progress import Progress
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    DEFAULT_GROUP_SIZE,
    ReferenceJob,
    TrainingBackend,
    TrainingRun,
    recipe_fallback,
    reference_name,
    train_and_score,
)
from privacy_gate.training.scoring import score_model
from privacy_gate.training.steps import ModelFactory, init_model

__all__ = [
    "AUTO",
    "BATCHED",
    "SEQUENTIAL",
    "SPECS",
    "AutoBackend",
    "BatchedBackend",
    "SequentialBackend",
    "choose_backend",
]

_LOG = logging.getLogger("privacy_gate.training")
AUTO, BATCHED, SEQUENTIAL = "auto", "batched", "sequential"


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


def _epoch_done(progress: Progress, models: int, epoch: int) -> None:
    progress.epoch_done(models)


def _train_batched(
    job: ReferenceJob,
    todo: list[int],
    progress: Progress,
    group_size: int,
    notes: dict[str, Any] | None = None,
) -> None:
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
            on_epoch_done=functools.partial(_epoch_done, progress, len(group)),
            notes=notes,
        )
        for k, model in zip(group, models, strict=True):
            job.store.save(
                reference_name(k),
                score_model(model, inputs, labels, job.data.task, augmentations=job.augmentations),
            )
        progress.update(len(missing.intersection(group)))


def choose_backend(
    factory: ModelFactory, backend: str, recipe: Recipe | None = None
) -> tuple[str, str | None]:
    """The local backend to use (``batched`` or ``sequential``) for ``backend`` (``auto``,
    ``batched`` or ``sequential``), and why batching was not (None when it was)."""
    if backend == SEQUENTIAL:
        return backend, None
    fallback = None if recipe is None else recipe_fallback(recipe)
    if fallback is not None:
        if backend == BATCHED:
            raise InputError(
                f"backend 'batched' cannot train this recipe: {fallback.value}. HINT: use "
                "backend 'auto' or 'sequential'."
            )
        return SEQUENTIAL, fallback.value
    from privacy_gate.training.batched import batching_problem

    problem = batching_problem(init_model(factory, 0))
    if problem is None:
        return BATCHED, None
    if backend == BATCHED:
        raise InputError(
            f"backend 'batched' cannot train this model: {problem}. HINT: use "
            "backend 'auto' or 'sequential'."
        )
    _LOG.warning("Training reference models one at a time: %s", problem)
    return SEQUENTIAL, problem


def _train_locally(job: ReferenceJob, asked: str, *, workers: int, group_size: int) -> TrainingRun:
    """The local backends: batched where ``asked`` and the model allow, else sequential."""
    todo = job.todo()
    n_models = job.plan.n_models
    used, reason = choose_backend(job.factory, asked, job.recipe)
    started = time.perf_counter()
    notes: dict[str, Any] = {}  # what the batched engine decided (a frozen trunk)
    with Progress(n_models, initial=n_models - len(todo), epochs=job.recipe.epochs) as progress:
        if todo and used == BATCHED:
            from privacy_gate.training.batched import BatchingUnsupported

            try:
                _train_batched(job, todo, progress, group_size, notes)
            except BatchingUnsupported as exc:
                if asked == BATCHED:
                    raise InputError(f"backend 'batched' cannot train this model: {exc}") from None
                _LOG.warning("Training reference models one at a time: %s", exc)
                used, reason = SEQUENTIAL, str(exc)
        remaining = job.todo()
        if remaining and used == SEQUENTIAL:
            _train_sequential(job, remaining, progress, workers)
    return TrainingRun(
        backend=used,
        fallback_reason=reason,
        trained_now=len(todo),
        resumed=n_models - len(todo),
        training_seconds=round(time.perf_counter() - started, 3),
        details={"device": str(job.device), **notes},
    )


@dataclass(frozen=True)
class SequentialBackend:
    """One model at a time (``workers`` > 1: in that many spawned processes; the factory
    must pickle). The only backend that takes a ``train_fn`` (e.g. a Lightning Trainer)."""

    workers: int = 1
    name: ClassVar[str] = SEQUENTIAL

    def train(self, job: ReferenceJob) -> TrainingRun:
        return _train_locally(job, self.name, workers=self.workers, group_size=1)


@dataclass(frozen=True)
class BatchedBackend:
    """Fixed groups of ``group_size`` models as batched ensembles; a model or recipe that
    cannot be batched is an error (use `AutoBackend` to fall back)."""

    group_size: int = DEFAULT_GROUP_SIZE
    name: ClassVar[str] = BATCHED

    def train(self, job: ReferenceJob) -> TrainingRun:
        return _train_locally(job, self.name, workers=1, group_size=self.group_size)


@dataclass(frozen=True)
class AutoBackend:
    """Batched when the model and recipe allow it, else sequential (the reason goes into
    the report's ``audit.training.fallback_reason``)."""

    group_size: int = DEFAULT_GROUP_SIZE
    workers: int = 1
    name: ClassVar[str] = AUTO

    def train(self, job: ReferenceJob) -> TrainingRun:
        return _train_locally(job, self.name, workers=self.workers, group_size=self.group_size)


def _positive(name: str) -> OptionParser:
    def parse(value: Any, owner: str) -> int:
        return integer_at_least(owner, name, value, lo=1)

    return parse


_WORKERS, _GROUP_SIZE = _positive("workers"), _positive("group_size")


def group_size_of(backend: TrainingBackend) -> int:
    """The models a backend with a ``group_size`` option trains as one batched group."""
    return int(getattr(backend, "group_size", DEFAULT_GROUP_SIZE))


class _Sequential(BackendSpec):
    name = SEQUENTIAL
    options: ClassVar[dict[str, OptionParser]] = {"workers": _WORKERS}

    def build(self, **options: Any) -> TrainingBackend:
        return SequentialBackend(**options)


class _Batched(BackendSpec):
    name = BATCHED
    options: ClassVar[dict[str, OptionParser]] = {"group_size": _GROUP_SIZE}

    def build(self, **options: Any) -> TrainingBackend:
        return BatchedBackend(**options)

    def round_multiple(self, backend: TrainingBackend) -> int:
        return group_size_of(backend)

    def fit_plan(self, unbatchable: str | None, owner: str) -> FitPlan:
        if unbatchable is not None:
            raise ConfigError(
                f"The 'backend' parameter of {owner} is 'batched' but this fit cannot be "
                f"trained as a batched ensemble: {unbatchable}. HINT: use backend='auto'."
            )
        return FitPlan(BATCHED, False)


class _Auto(BackendSpec):
    name = AUTO
    options: ClassVar[dict[str, OptionParser]] = {"workers": _WORKERS, "group_size": _GROUP_SIZE}

    def build(self, **options: Any) -> TrainingBackend:
        return AutoBackend(**options)

    def round_multiple(self, backend: TrainingBackend) -> int:
        return group_size_of(backend)

    def fit_plan(self, unbatchable: str | None, owner: str) -> FitPlan:
        if unbatchable is not None:
            note = f"Training reference models with Lightning, one at a time: {unbatchable}."
            return FitPlan(SEQUENTIAL, True, note)
        return FitPlan(AUTO, True)


SPECS: tuple[BackendSpec, ...] = (_Auto(), _Batched(), _Sequential())
"""The local backends, registered by `privacy_gate.training.backends`."""
