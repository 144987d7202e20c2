"""`run_audit`: the end-to-end membership audit of a PyTorch model.

plan (by patient) -> reference models trained with the candidate's recipe (batched
ensemble or sequential, resumable) -> signals -> the numerical core -> report files.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.adaptive import AdaptivePlan
from privacy_gate.config import AuditConfig, default_config
from privacy_gate.finish import Sections
from privacy_gate.pipeline import AuditResult, audit, write_outputs
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS, plan_digest
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.report_model import AuditReport
from privacy_gate.rounds import audit_in_rounds
from privacy_gate.signals import Signals, make_signals
from privacy_gate.training.backends import (
    merge_rounds,
    train_reference_models,
)
from privacy_gate.training.data import AuditData
from privacy_gate.training.device import AUTO
from privacy_gate.training.dp_sections import dp_recommendation, dp_training
from privacy_gate.training.prepared import (
    CACHE_DIR_ENVIRONMENT_VARIABLE,
    default_cache_root,
    prepare_audit,
    store_root,
)
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import (
    Augmentation,
    ReferenceJob,
    TrainFunction,
    TrainingBackend,
    TrainingPlan,
    TrainingRun,
    derived_seed,
)
from privacy_gate.training.scoring import score_model
from privacy_gate.training.sequential import ModelFactory, init_model, train_one
from privacy_gate.training.store import ScoreStore, folder_of, load_weights
from privacy_gate.training.weights import weights_sha256

__all__ = [
    "CACHE_DIR_ENVIRONMENT_VARIABLE",
    "TrainFunction",
    "TrainingPlan",
    "default_cache_root",
    "run_audit",
    "store_root",
    "trained_candidate_state",
]

_LOG = logging.getLogger("privacy_gate.training")
P = ParamSpec("P")
R = TypeVar("R")


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


TRAINED_BY_AUDIT = "trained by audit"
"""``training.candidate`` of an audit that trained the candidate itself (and stored it)."""


def trained_candidate_state(out: Path | None, report: AuditReport) -> Mapping[str, Any] | None:
    """The state dict of the candidate the audit of ``report`` trained (None when it was
    given, or its store holds none)."""
    training = report.audit.training
    if training is None or training.candidate != TRAINED_BY_AUDIT:
        return None
    return load_weights(folder_of(store_root(out), training.cache_key), "candidate")


@keeps_user_rng
def run_audit(
    factory: ModelFactory,
    data: AuditData,
    *,
    recipe: Recipe,
    config: AuditConfig | None = None,
    reference_models: int | str | AdaptivePlan = DEFAULT_REFERENCE_MODELS,
    backend: TrainingBackend | str = "auto",
    seed: int = 0,
    candidate: nn.Module | None = None,
    out_dir: str | Path | None = None,
    augmentations: Sequence[Augmentation] = (),
    raw_ids: bool = False,
    plots: bool = True,
    train_fn: TrainFunction | None = None,
    cache_key: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    device: str | torch.device | None = AUTO,
) -> AuditResult:
    """Audit a PyTorch model: train reference models with its recipe, score, decide.

    Args:
        factory: builds an untrained model (the candidate's architecture).
        data: the audit pool (the candidate's training records, then held-out records).
        recipe: how the candidate was trained; every reference model uses it.
        config: the policy (default: the packaged default policy).
        reference_models: K, even (64 by default; fewer is reported as under-powered
            when the noise floor reaches the policy's limits), or ``"auto"`` / an
            `AdaptivePlan`: train in rounds and stop at the first look that settles the
            verdict (`privacy_gate.adaptive`).
        backend: a `TrainingBackend` with its own options (``SequentialBackend(workers=4)``,
            ``BatchedBackend()``, ``AutoBackend()``, ``RayBackend(RayOptions(...))``) or a
            name (``"auto"``: batched when the model allows, else sequential).
        seed: seeds the plan, the reference models and (if trained here) the candidate.
        candidate: the trained release candidate; trained here with ``recipe`` on the
            training records when None.
        out_dir: where report files and the resumable reference-model scores go.
        augmentations: test-time augmentations; each record's score is the mean.
        train_fn: how the sequential backend trains one reference model (default: the
            recipe's standard loop); the batched backend always uses the recipe.
        cache_key: training settings outside the recipe that change the reference models
            (e.g. a Trainer's precision); part of the key of the stored models.
        provenance: entries for the report's ``audit.training`` (kept where the engine
            records nothing itself, e.g. why the caller chose the sequential backend).
        device: where the recipe's loops and the batched ensembles train and score:
            ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``
            (an error where torch sees no such device). A ``train_fn`` and Ray tasks
            place their models themselves.
    """
    config = config or default_config()
    prepared = prepare_audit(
        factory,
        data,
        recipe=recipe,
        reference_models=reference_models,
        backend=backend,
        seed=seed,
        candidate=candidate,
        out_dir=out_dir,
        augmentations=augmentations,
        train_fn=train_fn,
        cache_key=cache_key,
        device=device,
        owner="run_audit",
    )
    adaptive, n_planned, masks = prepared.adaptive, prepared.n_planned, prepared.plan.masks
    out, store, place = prepared.out, prepared.job.store, prepared.place
    identity, records = prepared.identity, data.record_table()
    rounds = _Rounds(prepared.job, prepared.trainer)
    rounds.scores(adaptive.schedule[0] if adaptive else n_planned)  # before the candidate
    target, model_sha256 = _candidate_scores(
        factory, data, recipe, store, candidate, seed, augmentations, place
    )

    def reveal(k: int) -> Signals:
        return make_signals(
            rounds.scores(k),
            masks[:k],
            target_scores=target,
            target_members=data.is_member(),
            task=data.task,
        )

    def sections_of(figures: AuditResult) -> Sections:
        """The provenance, named for the K the audit used, and the DP sections."""
        used = figures.report.audit.reference_models
        training = rounds.provenance()
        for name, value in (provenance or {}).items():
            if training.get(name) is None:
                training[name] = value
        audited = {
            "model_sha256": model_sha256,
            "plan": {"seed": seed, "sha256": plan_digest(masks[:used]), "file": "membership.npz"},
            "training": {
                **training,
                "recipe": recipe.to_dict(),
                "model": identity["factory"],
                "starting_point": identity["starting_point"],
                "candidate": "given" if candidate is not None else TRAINED_BY_AUDIT,
                "cache_key": store.key,
            },
        }
        initial_model = functools.partial(init_model, factory, derived_seed(seed, -1))
        return Sections(
            provenance=audited,
            dp_training=dp_training(figures, data, recipe),
            remedy=lambda decided: dp_recommendation(decided, data, recipe, config, initial_model),
        )

    options: dict[str, Any] = {
        "pseudonymizer": Pseudonymizer.from_environment(raw=raw_ids),
        "inputs": {"data_sha256": prepared.data_digest},
        "sections_of": sections_of,
    }
    if adaptive is None:
        result = audit(reveal(n_planned), records, config, **options)
    else:
        result = audit_in_rounds(reveal, records, config, adaptive, **options)
    used = result.report.audit.reference_models
    if out is not None:
        write_outputs(result, out, plots=plots)
        np.savez(
            out / "membership.npz", masks=masks[:used], sha256=np.array(plan_digest(masks[:used]))
        )
    return result


class _Rounds:
    """Trains the first k models of the plan on demand (each look trains only what the
    store lacks) and sums what every look's training did."""

    def __init__(self, job: ReferenceJob, trainer: TrainingBackend) -> None:
        self._job, self._trainer = job, trainer
        self._run: TrainingRun | None = None
        self._last: tuple[int, NDArray[np.float64]] | None = None

    def scores(self, k: int) -> NDArray[np.float64]:
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        job = replace(self._job, plan=self._job.plan.first(k))
        scores, training = train_reference_models(job, self._trainer)
        self._run = merge_rounds(self._run, training)
        self._last = (k, scores)
        return scores

    def provenance(self) -> dict[str, Any]:
        return {} if self._run is None else self._run.provenance()


def _candidate_scores(
    factory: ModelFactory,
    data: AuditData,
    recipe: Recipe,
    store: ScoreStore,
    candidate: nn.Module | None,
    seed: int,
    augmentations: Sequence[Augmentation],
    device: torch.device,
) -> tuple[NDArray[np.float64], str | None]:
    """The release candidate's scores and weights digest (trained here, once, if None)."""
    inputs, labels = data.pool()
    if candidate is not None:
        target = score_model(candidate, inputs, labels, data.task, augmentations=augmentations)
        return target, weights_sha256(candidate)
    stored = store.has("candidate") and store.load_text("candidate_sha256") is not None
    if not stored or not store.has_weights("candidate"):  # weights: for the release
        trained = train_one(
            factory,
            inputs,
            labels,
            np.flatnonzero(data.is_member()).astype(np.intp),
            recipe,
            seed=derived_seed(seed, -1),
            model_name="release candidate",
            device=device,
        )
        store.save(
            "candidate",
            score_model(trained, inputs, labels, data.task, augmentations=augmentations),
        )
        store.save_text("candidate_sha256", weights_sha256(trained))
        store.save_weights("candidate", trained)
    scores = store.load("candidate")
    assert scores is not None  # saved above or by an earlier run
    return scores, store.load_text("candidate_sha256")
