"""`run_audit`: the end-to-end membership audit of a PyTorch model.

plan (by patient) -> reference models trained with the candidate's recipe (batched
ensemble or sequential, resumable) -> signals -> the numerical core -> report files.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from enum import Enum
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.config import AuditConfig, default_config
from privacy_gate.errors import InputError
from privacy_gate.pipeline import AuditResult, audit, write_outputs
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS, draw_plan, plan_digest
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.signals import make_signals
from privacy_gate.training.data import AuditData
from privacy_gate.training.dp_sections import dp_recommendation, dp_training
from privacy_gate.training.progress import Progress
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    Augmentation,
    Fallback,
    TrainFunction,
    TrainingPlan,
    derived_seed,
    reference_name,
    train_and_score,
)
from privacy_gate.training.scoring import score_model
from privacy_gate.training.sequential import ModelFactory, init_model, train_one
from privacy_gate.training.store import ScoreStore
from privacy_gate.training.weights import weights_sha256

if TYPE_CHECKING:
    from privacy_gate.training.ray_backend import RayOptions

__all__ = [
    "CACHE_DIR_ENVIRONMENT_VARIABLE",
    "Backend",
    "TrainFunction",
    "TrainingPlan",
    "default_cache_root",
    "run_audit",
    "train_reference_models",
]

_LOG = logging.getLogger("privacy_gate.training")
CACHE_DIR_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_CACHE_DIR"
P = ParamSpec("P")
R = TypeVar("R")


class Backend(str, Enum):
    AUTO = "auto"
    BATCHED = "batched"
    SEQUENTIAL = "sequential"
    RAY = "ray"  # Ray tasks on a cluster (privacy_gate.training.ray_backend)


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_identity(factory: ModelFactory) -> dict[str, Any]:
    """Name and architecture (parameter names and shapes) of the factory's model."""
    model = init_model(factory, 0)
    target: Any = factory
    keywords: dict[str, Any] = {}
    while isinstance(target, functools.partial):
        keywords = {**target.keywords, **keywords}
        target = target.func
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return {
        "factory": f"{module}:{name}",
        "factory_args": keywords,
        "architecture": [[n, list(p.shape)] for n, p in model.state_dict().items()],
        "modules": str(model),
    }


def _worker_init() -> None:
    torch.set_num_threads(1)


def _sequential(
    factory: ModelFactory,
    data: AuditData,
    plan: TrainingPlan,
    todo: list[int],
    recipe: Recipe,
    store: ScoreStore,
    progress: Progress,
    workers: int,
    augmentations: Sequence[Augmentation],
    train_fn: TrainFunction | None,
) -> None:
    inputs, labels = data.pool()
    jobs = {
        k: (factory, inputs, labels, plan.subset(k), recipe, plan.seeds[k],
            f"reference model {k}", data.task, augmentations)
        for k in todo
    }  # fmt: skip
    if train_fn is not None or workers <= 1:
        for k, job in jobs.items():
            store.save(reference_name(k), train_and_score(*job, train_fn=train_fn))
            progress.update()
        return
    context = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        futures = {pool.submit(train_and_score, *job): k for k, job in jobs.items()}
        for future in as_completed(futures):  # each is saved as soon as it finishes
            store.save(reference_name(futures[future]), future.result())
            progress.update()


def _batched(
    factory: ModelFactory,
    data: AuditData,
    plan: TrainingPlan,
    todo: list[int],
    recipe: Recipe,
    store: ScoreStore,
    progress: Progress,
    group_size: int,
    augmentations: Sequence[Augmentation],
) -> None:
    """Train fixed groups of models (0..g-1, g..2g-1, ...) as batched ensembles.

    Groups are fixed whatever is already done, and a group with any missing model is
    retrained whole, so a resumed audit trains exactly the groups an uninterrupted one
    would, with the same random streams (dropout masks come from the group's seeds).
    """
    from privacy_gate.training.batched import train_batched

    inputs, labels = data.pool()
    missing = set(todo)
    for start in range(0, plan.n_models, group_size):
        group = list(range(start, min(start + group_size, plan.n_models)))
        if not missing.intersection(group):
            continue
        models = train_batched(
            factory,
            inputs,
            labels,
            [plan.subset(k) for k in group],
            recipe,
            seeds=[plan.seeds[k] for k in group],
        )
        for k, model in zip(group, models, strict=True):
            store.save(
                reference_name(k),
                score_model(model, inputs, labels, data.task, augmentations=augmentations),
            )
        progress.update(len(missing.intersection(group)))


def choose_backend(
    factory: ModelFactory, backend: Backend, recipe: Recipe | None = None
) -> tuple[Backend, str | None]:
    """The backend to use, and why batching was not (None when it was)."""
    if backend is Backend.SEQUENTIAL:
        return backend, None
    if recipe is not None and recipe.dp is not None:
        if backend is Backend.BATCHED:
            raise InputError(
                f"backend 'batched' cannot train this recipe: {Fallback.DP_SGD.value}. HINT: use "
                "backend 'auto' or 'sequential'."
            )
        return Backend.SEQUENTIAL, Fallback.DP_SGD.value
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


def train_reference_models(
    factory: ModelFactory,
    data: AuditData,
    plan: TrainingPlan,
    recipe: Recipe,
    store: ScoreStore,
    *,
    backend: Backend = Backend.AUTO,
    workers: int = 1,
    group_size: int = 16,
    augmentations: Sequence[Augmentation] = (),
    train_fn: TrainFunction | None = None,
    ray: RayOptions | None = None,
) -> tuple[NDArray[np.float64], dict[str, Any]]:
    """Train (or resume) every reference model; return scores ``(K, N)`` and provenance.

    The batched backend trains ``factory`` models with ``recipe``; the sequential one
    uses ``train_fn`` when given (e.g. a Lightning Trainer per model), else the recipe.
    The ray backend (``ray`` options) runs the same work as Ray tasks.
    """
    if ray is not None and backend is not Backend.RAY:
        raise InputError(
            f"Ray options were given but the backend is {backend.value!r}. HINT: use "
            "backend 'ray', or drop the Ray options."
        )
    if backend is Backend.RAY:
        from privacy_gate.training.ray_backend import train_on_ray

        return train_on_ray(factory, data, plan, recipe, store, options=ray,
                            group_size=group_size, augmentations=augmentations,
                            train_fn=train_fn)  # fmt: skip
    names = [reference_name(k) for k in range(plan.n_models)]
    todo = [k for k, name in enumerate(names) if not store.has(name)]
    used, reason = choose_backend(factory, backend, recipe)
    started = time.perf_counter()
    with Progress(plan.n_models, initial=plan.n_models - len(todo)) as progress:
        if todo and used is Backend.BATCHED:
            from privacy_gate.training.batched import BatchingUnsupported

            try:
                _batched(
                    factory, data, plan, todo, recipe, store, progress, group_size, augmentations
                )
            except BatchingUnsupported as exc:
                if backend is Backend.BATCHED:
                    raise InputError(f"backend 'batched' cannot train this model: {exc}") from None
                _LOG.warning("Training reference models one at a time: %s", exc)
                used, reason = Backend.SEQUENTIAL, str(exc)
                todo = [k for k, name in enumerate(names) if not store.has(name)]
        if todo and used is Backend.SEQUENTIAL:
            _sequential(
                factory, data, plan, todo, recipe, store, progress, workers, augmentations, train_fn
            )
    scores = np.stack([store.load(name) for name in names])  # type: ignore[misc]
    return scores, {
        "backend": used.value,
        "fallback_reason": reason,
        "trained_now": len(todo),
        "resumed": plan.n_models - len(todo),
        "training_seconds": round(time.perf_counter() - started, 3),
    }


def keeps_user_rng(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` inside ``torch.random.fork_rng``: reference models seed torch's
    global generator per model, and the caller's RNG state must be unchanged afterwards
    (a Lightning user's next ``fit`` must not depend on whether an audit ran)."""

    @functools.wraps(function)
    def kept(*args: P.args, **kwargs: P.kwargs) -> R:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
        devices = list(range(torch.cuda.device_count())) if cuda else []
        with torch.random.fork_rng(devices=devices):
            return function(*args, **kwargs)

    return kept


def default_cache_root() -> Path:
    """Where an audit without ``out_dir`` keeps finished reference models, so a rerun
    resumes: ``$PRIVACY_GATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/privacy-gate``, else
    ``~/.cache/privacy-gate``; never the working directory."""
    explicit = os.environ.get(CACHE_DIR_ENVIRONMENT_VARIABLE)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "privacy-gate"


@keeps_user_rng
def run_audit(
    factory: ModelFactory,
    data: AuditData,
    *,
    recipe: Recipe,
    config: AuditConfig | None = None,
    reference_models: int = DEFAULT_REFERENCE_MODELS,
    backend: Backend | str = Backend.AUTO,
    seed: int = 0,
    candidate: nn.Module | None = None,
    out_dir: str | Path | None = None,
    workers: int = 1,
    augmentations: Sequence[Augmentation] = (),
    raw_ids: bool = False,
    plots: bool = True,
    train_fn: TrainFunction | None = None,
    cache_key: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    ray: RayOptions | None = None,
) -> AuditResult:
    """Audit a PyTorch model: train reference models with its recipe, score, decide.

    Args:
        factory: builds an untrained model (the candidate's architecture).
        data: the audit pool (the candidate's training records, then held-out records).
        recipe: how the candidate was trained; every reference model uses it.
        config: the policy (default: the packaged default policy).
        reference_models: K, even (64 by default; fewer is reported as under-powered
            when the noise floor reaches the policy's limits).
        backend: "auto" (batched when the model allows, else sequential), "batched",
            "sequential" or "ray" (Ray tasks on a cluster, see ``ray``).
        seed: seeds the plan, the reference models and (if trained here) the candidate.
        candidate: the trained release candidate; trained here with ``recipe`` on the
            training records when None.
        out_dir: where report files and the resumable reference-model scores go.
        workers: worker processes for the sequential backend (factory must pickle).
        augmentations: test-time augmentations; each record's score is the mean.
        train_fn: how the sequential backend trains one reference model (default: the
            recipe's standard loop); the batched backend always uses the recipe.
        cache_key: training settings outside the recipe that change the reference models
            (e.g. a Trainer's precision); part of the key of the stored models.
        provenance: entries for the report's ``audit.training`` (kept where the engine
            records nothing itself, e.g. why the caller chose the sequential backend).
        ray: `privacy_gate.training.ray_backend.RayOptions` of the ray backend (cluster
            address, resources per task, models per task, retries); default options
            when None.
    """
    config = config or default_config()
    backend = Backend(backend)
    out = Path(out_dir) if out_dir is not None else None
    records = data.record_table()
    patient_index, _ = records.patient_index()
    masks = draw_plan(patient_index, reference_models, seed=seed)
    plan = TrainingPlan(masks, tuple(derived_seed(seed, k) for k in range(reference_models)), seed)
    inputs, labels = data.pool()
    data_digest = tensor_digest(inputs, labels)
    identity = model_identity(factory)
    key = {
        "recipe": recipe.to_dict(),
        "model": identity,
        "data": data_digest,
        "plan": plan_digest(masks),
        "seed": seed,
        "task": data.task.value,
        "augmentations": len(augmentations),
        "settings": dict(cache_key or {}),
    }
    store_root = out / ".privacy_gate_cache" if out is not None else default_cache_root()
    store = ScoreStore(store_root, key, data.n_records)
    scores, training = train_reference_models(
        factory,
        data,
        plan,
        recipe,
        store,
        backend=backend,
        workers=workers,
        augmentations=augmentations,
        train_fn=train_fn,
        ray=ray,
    )
    if candidate is None:
        if not store.has("candidate") or store.load_text("candidate_sha256") is None:
            trained = train_one(
                factory,
                inputs,
                labels,
                np.flatnonzero(data.is_member()).astype(np.intp),
                recipe,
                seed=derived_seed(seed, -1),
                model_name="release candidate",
            )
            store.save(
                "candidate",
                score_model(trained, inputs, labels, data.task, augmentations=augmentations),
            )
            store.save_text("candidate_sha256", weights_sha256(trained))
        target = store.load("candidate")
        model_sha256 = store.load_text("candidate_sha256")
    else:
        target = score_model(candidate, inputs, labels, data.task, augmentations=augmentations)
        model_sha256 = weights_sha256(candidate)
    signals = make_signals(
        scores, masks, target_scores=target, target_members=data.is_member(), task=data.task
    )
    for name, value in (provenance or {}).items():
        if training.get(name) is None:
            training[name] = value
    audit_provenance = {
        "model_sha256": model_sha256,
        "plan": {"seed": seed, "sha256": plan_digest(masks), "file": "membership.npz"},
        "training": {
            **training,
            "recipe": recipe.to_dict(),
            "model": identity["factory"],
            "candidate": "given" if candidate is not None else "trained by audit",
            "cache_key": store.key,
        },
    }
    result = audit(
        signals,
        records,
        config,
        pseudonymizer=Pseudonymizer.from_environment(raw=raw_ids),
        inputs={"data_sha256": data_digest},
        provenance=audit_provenance,
    )
    result.report["dp_training"] = dp_training(result, data, recipe)
    result.report["dp_recommendation"] = dp_recommendation(
        result, data, recipe, config, functools.partial(init_model, factory, derived_seed(seed, -1))
    )
    if out is not None:
        write_outputs(result, out, plots=plots)
        np.savez(out / "membership.npz", masks=masks, sha256=np.array(plan_digest(masks)))
    return result
