"""An audit prepared to train: the plan drawn by patient, the inputs checked, and the
resumable store of finished reference models under its key. `run_audit` prepares this
way, and so does each rank of a multi-process fit that trains its share of the models
(`privacy_gate.training.shares`): the same arguments give the same plan, seeds and key,
so the ranks' models are exactly the ones a single process would train."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from privacy_gate.adaptive import AdaptivePlan, parse_reference_models
from privacy_gate.errors import InputError
from privacy_gate.plan import PLAN_ROUND, draw_plan, plan_digest
from privacy_gate.signing import signing_key_from_environment
from privacy_gate.training.backends import check_supported, make_backend
from privacy_gate.training.data import AuditData
from privacy_gate.training.device import AUTO, resolve_device
from privacy_gate.training.inputs import check_model_outputs, check_recipe_loss
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    Augmentation,
    ReferenceJob,
    TrainFunction,
    TrainingBackend,
    TrainingPlan,
    derived_seed,
)
from privacy_gate.training.sequential import ModelFactory, init_model
from privacy_gate.training.store import ScoreStore
from privacy_gate.training.weights import weights_sha256

__all__ = [
    "CACHE_DIR_ENVIRONMENT_VARIABLE",
    "PreparedAudit",
    "default_cache_root",
    "model_identity",
    "prepare_audit",
    "store_root",
    "tensor_digest",
]

CACHE_DIR_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_CACHE_DIR"


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_identity(factory: ModelFactory, model: nn.Module) -> dict[str, Any]:
    """Name and architecture (parameter names and shapes) of the factory's ``model``.

    The name is the user's factory's: through ``functools.partial`` and through wrappers
    that name what they wrap in ``__wrapped__`` (as ``functools.wraps`` does), such as an
    integration's adapter around the user's function."""
    target: Any = factory
    keywords: dict[str, Any] = {}
    while True:
        if callable(getattr(target, "__wrapped__", None)):  # first: a partial may name one
            target = target.__wrapped__
        elif isinstance(target, functools.partial):
            keywords = {**target.keywords, **keywords}
            target = target.func
        else:
            break
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return {
        "factory": f"{module}:{name}",
        "factory_args": keywords,
        "architecture": [[n, list(p.shape)] for n, p in model.state_dict().items()],
        "modules": str(model),
    }


def starting_point(factory: ModelFactory, model: nn.Module) -> dict[str, Any]:
    """The weights every reference model starts from whatever its seed, found by building
    a second model (seed 1) beside ``model`` (seed 0): a fine-tune's pretrained weights.

    Their digest goes into the report and keys the store, so fine-tuning from another
    pretrained file never reuses scores. For a model trained from scratch only constant
    initialisations (zero biases, norm scales) are seed-independent.
    """
    first, second = model.state_dict(), init_model(factory, 1).state_dict()
    fixed = {
        name: tensor
        for name, tensor in first.items()
        if name in second
        and second[name].shape == tensor.shape
        and second[name].dtype == tensor.dtype
        and torch.equal(second[name], tensor)
    }
    return {
        "sha256": weights_sha256(fixed) if fixed else None,
        "seed_independent_values": sum(t.numel() for t in fixed.values()),
        "values": sum(t.numel() for t in first.values()),
    }


def store_root(out: Path | None) -> Path:
    """Where an audit writing to ``out`` keeps its finished models' scores."""
    return out / ".privacy_gate_cache" if out is not None else default_cache_root()


def default_cache_root() -> Path:
    """Where an audit without ``out_dir`` keeps finished reference models, so a rerun
    resumes: ``$PRIVACY_GATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/privacy-gate``, else
    ``~/.cache/privacy-gate``; never the working directory."""
    explicit = os.environ.get(CACHE_DIR_ENVIRONMENT_VARIABLE)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "privacy-gate"


def preflight(
    factory: ModelFactory, data: AuditData, recipe: Recipe, candidate: nn.Module | None
) -> dict[str, Any]:
    """Before any model trains: the recipe's loss and the models' outputs fit the task
    and the labels (`privacy_gate.training.inputs`; the pool was checked when built), and
    the signing key of the environment, if set, can be read (the report file is signed
    at the end). The factory's model identity, from the one model built here."""
    check_recipe_loss(recipe.loss, data.task)
    signing_key_from_environment()  # a key that cannot be read fails now, not after training
    model = init_model(factory, 0)
    if not isinstance(model, nn.Module):
        raise InputError(
            f"The model factory must return an nn.Module. Got {type(model).__name__} instead."
        )
    inputs, labels = data.pool()
    check_model_outputs(model, inputs, labels, data.task, f"The model ({type(model).__name__})")
    if candidate is not None:
        check_model_outputs(candidate, inputs, labels, data.task, "The candidate")
    return {**model_identity(factory, model), "starting_point": starting_point(factory, model)}


@dataclass(frozen=True)
class PreparedAudit:
    """What `prepare_audit` settled: the backend and device, the plan (all planned models;
    an adaptive audit's looks take its first ``k``), the job over the store, and the
    identity and digest that key the store."""

    trainer: TrainingBackend
    place: torch.device
    adaptive: AdaptivePlan | None
    n_planned: int
    plan: TrainingPlan
    job: ReferenceJob
    identity: dict[str, Any]
    data_digest: str
    out: Path | None


def prepare_audit(
    factory: ModelFactory,
    data: AuditData,
    *,
    recipe: Recipe,
    reference_models: int | str | AdaptivePlan,
    backend: TrainingBackend | str,
    seed: int,
    candidate: nn.Module | None = None,
    out_dir: str | Path | None,
    augmentations: Sequence[Augmentation] = (),
    train_fn: TrainFunction | None = None,
    cache_key: Mapping[str, Any] | None = None,
    device: str | torch.device | None = AUTO,
    owner: str = "run_audit",
) -> PreparedAudit:
    """Check everything before any model trains and set up the plan and the store (the
    arguments as for `run_audit`)."""
    place = resolve_device(device, owner)
    trainer = make_backend(backend)
    planned = parse_reference_models(reference_models, owner=owner, error=InputError)
    adaptive = planned if isinstance(planned, AdaptivePlan) else None
    check_supported(
        trainer,
        dp_sgd=recipe.dp is not None,
        rounds=adaptive.schedule if adaptive else None,
        device_type=place.type,
        owner=owner,
    )
    n_planned = planned.max_reference_models if isinstance(planned, AdaptivePlan) else planned
    out = Path(out_dir) if out_dir is not None else None
    records = data.record_table()
    patient_index, _ = records.patient_index()
    masks = draw_plan(
        patient_index,
        n_planned,
        seed=seed,
        round_size=adaptive.round_size if adaptive else PLAN_ROUND,
    )
    plan = TrainingPlan(masks, tuple(derived_seed(seed, k) for k in range(n_planned)), seed)
    inputs, labels = data.pool()
    identity = preflight(factory, data, recipe, candidate)
    data_digest = tensor_digest(inputs, labels)
    key = {
        "recipe": recipe.to_dict(),
        "model": identity,
        "data": data_digest,
        "plan": plan_digest(masks),  # of every planned model: the store outlives the looks
        "seed": seed,
        "task": data.task.value,
        "augmentations": len(augmentations),
        "settings": dict(cache_key or {}),
    }
    store = ScoreStore(store_root(out), key, data.n_records)
    job = ReferenceJob(
        factory, data, plan, recipe, store, tuple(augmentations), train_fn, device=place
    )
    return PreparedAudit(trainer, place, adaptive, n_planned, plan, job, identity, data_digest, out)
