"""The driver: submit one task per group, store each result as it arrives, retry and
report failures, resume from what is stored."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from privacy_gate.errors import (
    ConfigError,
    InputError,
    PrivacyGateError,
)
from privacy_gate.training.data import AuditData
from privacy_gate.training.progress import Progress
from privacy_gate.training.ray_backend.memory import (
    WORKER_BASE_BYTES,
    _check_feasible,
    _task_budget,
    auto_models_per_task,
    training_bytes_per_model,
)
from privacy_gate.training.ray_backend.options import RayOptions, _require_ray
from privacy_gate.training.ray_backend.task import _probe, _Shared, _train_group, check_picklable
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    DEFAULT_GROUP_SIZE,
    Augmentation,
    ReferenceJob,
    TrainFunction,
    TrainingPlan,
    TrainingRun,
    recipe_fallback,
    reference_name,
)
from privacy_gate.training.steps import ModelFactory, init_model
from privacy_gate.training.store import ScoreStore

_LOG = logging.getLogger("privacy_gate.training")


class RayTrainingFailed(PrivacyGateError, RuntimeError):
    """Ray tasks that failed for good (after their retries); the reference models that
    finished are kept in the store, so a rerun trains only the missing ones."""


# The driver.


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """The ``ray`` module, connected: to the running connection when there is one, else
    to ``address`` / ``RAY_ADDRESS`` / a new local instance (shut down at the end)."""
    ray = _require_ray()
    if ray.is_initialized():
        if options.address is not None:
            _LOG.info("Ray is already initialised in this process; 'address' is not used.")
        yield ray
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    settings: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address == "local":
        settings["include_dashboard"] = False
    try:
        ray.init(**settings)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        raise InputError(
            f"Cannot connect to the Ray cluster at {address!r}: {type(exc).__name__}: {exc}. "
            "HINT: check 'address' in the ray section or RAY_ADDRESS (`ray status` on the "
            "head node prints it); leave both unset for a local Ray instance."
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _root_cause(error: BaseException) -> tuple[BaseException, bool]:
    """The exception inside Ray's wrappers (a task's own error, or what failed to load),
    and whether Ray failed to load the task's arguments (a system error on the way)."""
    loading = False
    for _ in range(4):
        loading = loading or type(error).__name__ == "RaySystemError"
        inner = getattr(error, "cause", None) or getattr(error, "client_exc", None)
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error, loading


def _failure_message(error: BaseException, options: RayOptions) -> tuple[str, str]:
    """What went wrong in a task, and a ``HINT:`` sentence (empty when there is none)."""
    cause, loading = _root_cause(error)
    if loading or isinstance(cause, ModuleNotFoundError):
        return (
            "The Ray workers cannot load the model factory, train_fn, data or "
            f"augmentations: {type(cause).__name__}: {cause}.",
            "HINT: workers must import every module these come from (and privacy_gate): "
            "install your package on the cluster's image, or ship the code with the tasks, "
            "e.g. ray: {runtime_env: {working_dir: .}} in audit.yaml or "
            "RayOptions(runtime_env={'working_dir': '.'}).",
        )
    kind = type(error).__name__
    if kind in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError"):
        return (
            f"{kind}: the task's worker died {options.max_retries + 1} time(s).",
            "HINT: out of memory? Ask for more (ray: memory) or train fewer models per "
            "task (ray: models_per_task); preempted nodes: raise ray: max_retries.",
        )
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}.", ""


def train_on_ray(
    factory: ModelFactory,
    data: AuditData,
    plan: TrainingPlan,
    recipe: Recipe,
    store: ScoreStore,
    *,
    options: RayOptions | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    augmentations: Sequence[Augmentation] = (),
    train_fn: TrainFunction | None = None,
) -> TrainingRun:
    """Train (or resume) every reference model as Ray tasks into ``store``; what the
    training did (`reference.TrainingBackend.train`: the caller reads the scores from the
    store once).

    Each task trains one model with ``train_fn`` when it is given; otherwise a fixed
    group of ``models_per_task`` models as one batched ensemble when the model allows,
    else one model with the recipe's loop.

    Raises:
        RayTrainingFailed: tasks failed after their retries (finished models are kept).
        TrainingError: a model could not be trained (e.g. its loss became NaN).
        ConfigError: what the tasks need cannot be sent to the workers, the workers
            cannot import it, or no node can meet the resource request.
    """
    options = options or RayOptions()
    todo = [k for k in range(plan.n_models) if not store.has(reference_name(k))]
    reason: str | None = None
    batched = train_fn is None
    if batched:
        from privacy_gate.training.batched import batching_problem

        reason = batching_problem(init_model(factory, 0))
        fallback = recipe_fallback(recipe)
        if fallback is not None:
            reason = fallback.value
        if reason is not None:
            _LOG.warning("Training reference models one per Ray task: %s", reason)
            batched = False
    details: dict[str, Any] = {"models_per_task": None, "tasks": 0, **options.provenance()}
    started = time.perf_counter()
    with Progress(plan.n_models, initial=plan.n_models - len(todo)) as progress:
        if todo:
            details, reason = _run_tasks(
                factory,
                data,
                plan,
                recipe,
                store,
                progress,
                todo,
                options=options,
                batched=batched,
                group_size=group_size,
                augmentations=augmentations,
                train_fn=train_fn,
                reason=reason,
            )
    return TrainingRun(
        backend="ray",
        fallback_reason=reason,
        trained_now=len(todo),
        resumed=plan.n_models - len(todo),
        training_seconds=round(time.perf_counter() - started, 3),
        details={"ray": details},
    )


def _run_tasks(
    factory: ModelFactory,
    data: AuditData,
    plan: TrainingPlan,
    recipe: Recipe,
    store: ScoreStore,
    progress: Progress,
    todo: list[int],
    *,
    options: RayOptions,
    batched: bool,
    group_size: int,
    augmentations: Sequence[Augmentation],
    train_fn: TrainFunction | None,
    reason: str | None,
) -> tuple[dict[str, Any], str | None]:
    for name, value in (
        ("model factory", factory),
        ("train_fn", train_fn),
        ("augmentations", tuple(augmentations)),
    ):
        check_picklable(name, value)
    inputs, labels = data.pool()
    shared = _Shared(factory, inputs, labels, recipe, data.task, tuple(augmentations), train_fn)
    with ray_session(options) as ray:
        _check_feasible(ray, options)
        task_options = options.task_options()
        shared_ref = ray.put(shared)
        try:
            probe = ray.get(
                ray.remote(_probe).options(**task_options).remote(shared_ref, options.num_gpus)
            )
        except ray.exceptions.RayError as exc:
            cause, _ = _root_cause(exc)
            if isinstance(cause, PrivacyGateError):
                raise cause from None
            raise ConfigError(" ".join(_failure_message(exc, options))) from None
        if probe["torch"] != torch.__version__:
            _LOG.warning(
                "The Ray workers run torch %s, this process %s: scores may differ "
                "slightly from a local audit.",
                probe["torch"],
                torch.__version__,
            )
        size = 1
        if batched and options.models_per_task == "auto":
            budget, source = _task_budget(ray, options, probe)
            # the task's copy of the pool (on its device), and on CPU the worker itself
            fixed = inputs.numel() * inputs.element_size()
            fixed += WORKER_BASE_BYTES if options.num_gpus <= 0 else 0
            per_model = training_bytes_per_model(factory, inputs, recipe)
            size = auto_models_per_task(
                budget=budget, fixed=fixed, per_model=per_model, cap=group_size
            )
            _LOG.info(
                "Ray: %d models per task (%.0f MiB from %s, %.1f MiB per model).",
                size,
                budget / 2**20,
                source,
                per_model / 2**20,
            )
        elif batched:
            size = int(options.models_per_task)
        missing = set(todo)
        groups = [
            list(range(start, min(start + size, plan.n_models)))
            for start in range(0, plan.n_models, size)
        ]
        groups = [g for g in groups if missing.intersection(g)]
        remote = ray.remote(_train_group).options(**task_options)
        threads = max(1, int(options.num_cpus))
        pending = {
            remote.remote(
                shared_ref,
                tuple(group),
                [plan.subset(k) for k in group],
                [plan.seeds[k] for k in group],
                batched,
                threads,
                options.num_gpus,
            ): group
            for group in groups
        }
        failures: list[tuple[list[int], BaseException]] = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    group = pending.pop(ref)
                    try:
                        scores, task_reason = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        _LOG.error(
                            "Ray task for reference models %s failed: %s",
                            group,
                            " ".join(_failure_message(exc, options)),
                        )
                        failures.append((group, exc))
                        continue
                    for k, values in zip(group, scores, strict=True):
                        store.save(reference_name(k), values)
                    progress.update(len(missing.intersection(group)))
                    reason = reason or task_reason
        finally:
            for ref in pending:  # interrupted: nothing more is trained for this audit
                ray.cancel(ref, force=True)
    if failures:
        _raise_failures(failures, options, store, plan.n_models)
    return {"models_per_task": size, "tasks": len(groups), **options.provenance()}, reason


def _raise_failures(
    failures: list[tuple[list[int], BaseException]],
    options: RayOptions,
    store: ScoreStore,
    n_models: int,
) -> None:
    models = sorted(k for group, _ in failures for k in group)
    finished = sum(store.has(reference_name(k)) for k in range(n_models))
    kept = (
        f"{finished} of {n_models} reference models are finished and kept in {store.path}; "
        "a rerun trains only the missing ones."
    )
    first = failures[0][1]
    cause, _ = _root_cause(first)
    if isinstance(cause, PrivacyGateError):  # the model's own error, as a local run raises it
        try:
            same_kind = type(cause)(f"{cause} ({kept})")
        except TypeError:  # an exception class with another signature
            raise cause from None
        raise same_kind from None
    message, hint = _failure_message(first, options)
    raise RayTrainingFailed(
        f"{len(failures)} Ray task(s) failed after their retries (reference models "
        f"{models}): {message} {kept} {hint}".rstrip()
    )


@dataclass(frozen=True)
class RayBackend:
    """Reference models as Ray tasks (`train_on_ray`), with the cluster's options."""

    options: RayOptions = field(default_factory=RayOptions)
    group_size: int = DEFAULT_GROUP_SIZE
    name: ClassVar[str] = "ray"

    def train(self, job: ReferenceJob) -> TrainingRun:
        return train_on_ray(
            job.factory,
            job.data,
            job.plan,
            job.recipe,
            job.store,
            options=self.options,
            group_size=self.group_size,
            augmentations=job.augmentations,
            train_fn=job.train_fn,
        )
