"""The report's ``audit`` (what was audited, how it was trained), ``aggregate`` (attacks on
the release candidate) and DP sections, as typed fields (names are the JSON keys)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from privacy_gate.model_files import ModelFiles
from privacy_gate.report_model.codec import OMIT_NONE, decode, encode
from privacy_gate.signals import Task

__all__ = [
    "Adaptive",
    "Aggregate",
    "AttackFigures",
    "AuditInfo",
    "DPRecommendation",
    "DPTraining",
    "Look",
    "Plan",
    "Roc",
    "TrainingInfo",
]


@dataclass(frozen=True)
class Plan:
    """The membership plan of the reference models (``membership.npz``)."""

    seed: int
    sha256: str
    file: str


@dataclass(frozen=True)
class TrainingInfo:
    """How the reference models were trained (audits that trained them: run_audit, the
    Lightning callback, the MLflow evaluator). ``extra`` holds backend details (Ray's
    cluster, the Trainer's class)."""

    backend: str
    fallback_reason: str | None
    trained_now: int
    resumed: int
    training_seconds: float
    recipe: Mapping[str, Any]
    model: str
    candidate: str
    cache_key: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditInfo:
    """What was audited: counts, inputs' digests, the policy and the provenance.

    ``config`` is the policy as written (`privacy_gate.config.parse_config` reads it);
    ``pseudonym_key_id`` names the pseudonym key (`privacy_gate.pseudonyms.Pseudonymizer.
    key_id`; None for raw ids or a random key), so that audits can match patients;
    ``plan``, ``training`` and ``model_sha256`` exist when the audit trained the reference
    models itself; a signed report binds ``run_id`` (the MLflow run), ``model_sha256`` and,
    once the audited model is logged, ``model_files`` (`privacy_gate.model_files`: the bytes
    of every file of the logged model, which the registry gate compares);
    ``extra`` keeps provenance a caller added.
    """

    package_version: str
    created_at: str
    reference_models: int
    records: int
    patients: int
    inputs: Mapping[str, str]
    config: Mapping[str, Any]
    policy_sha256: str
    pseudonyms: str
    target: bool
    task: Task
    pseudonym_key_id: str | None = field(default=None, metadata=OMIT_NONE)
    model_sha256: str | None = field(default=None, metadata=OMIT_NONE)
    model_files: ModelFiles | None = field(default=None, metadata=OMIT_NONE)
    run_id: str | None = field(default=None, metadata=OMIT_NONE)
    plan: Plan | None = field(default=None, metadata=OMIT_NONE)
    training: TrainingInfo | None = field(default=None, metadata=OMIT_NONE)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_provenance(self, provenance: Mapping[str, Any]) -> AuditInfo:
        """This section with ``provenance``'s entries (plan, training, model digest, or a
        caller's own) added, read as a report's would be."""
        merged: AuditInfo = decode(AuditInfo, {**encode(self), **provenance}, "audit")
        return merged


@dataclass(frozen=True)
class Roc:
    """An attack's ROC curve on the release candidate."""

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]


@dataclass(frozen=True)
class AttackFigures:
    """One attack on the release candidate; ``tpr_at_fpr`` keys are ``repr(fpr)``."""

    auc: float | None
    tpr_at_fpr: Mapping[str, float | None]
    roc: Roc


@dataclass(frozen=True)
class Aggregate:
    """Every attack on the release candidate; the gate reads the ``strongest``."""

    members: int
    non_members: int
    strongest: str
    rmia_offline_a: float | None
    rmia_offline_a_source: str | None
    attacks: Mapping[str, AttackFigures]

    @property
    def strongest_attack(self) -> AttackFigures | None:
        return self.attacks.get(self.strongest)


@dataclass(frozen=True)
class DPTraining:
    """The DP guarantee of the audited DP-SGD recipe, checked against the measured AUCs."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float | None
    accountant: str
    auc_ceiling: float
    auc_ceiling_gdp: float
    max_records_per_patient: int
    patient_auc_ceiling: float
    records_checked: int
    records_above_ceiling: int
    ceiling_test: str


@dataclass(frozen=True)
class DPRecommendation:
    """The DP-SGD retraining remedy. ``status`` is ``recommended`` (every figure set),
    ``not_needed`` (the gate passed) or ``unavailable`` (``reason`` says why)."""

    status: RecommendationStatus
    reason: str
    auc_limit: float | None = field(default=None, metadata=OMIT_NONE)
    auc_limit_source: str | None = field(default=None, metadata=OMIT_NONE)
    max_records_per_patient: int | None = field(default=None, metadata=OMIT_NONE)
    target_mu: float | None = field(default=None, metadata=OMIT_NONE)
    target_record_auc: float | None = field(default=None, metadata=OMIT_NONE)
    noise_multiplier: float | None = field(default=None, metadata=OMIT_NONE)
    max_grad_norm: float | None = field(default=None, metadata=OMIT_NONE)
    max_grad_norm_source: str | None = field(default=None, metadata=OMIT_NONE)
    epsilon: float | None = field(default=None, metadata=OMIT_NONE)
    delta: float | None = field(default=None, metadata=OMIT_NONE)
    sample_rate: float | None = field(default=None, metadata=OMIT_NONE)
    batch_size: int | None = field(default=None, metadata=OMIT_NONE)
    dataset_size: int | None = field(default=None, metadata=OMIT_NONE)
    epochs: int | None = field(default=None, metadata=OMIT_NONE)
    steps: int | None = field(default=None, metadata=OMIT_NONE)
    accountant: str | None = field(default=None, metadata=OMIT_NONE)
    auc_ceiling: float | None = field(default=None, metadata=OMIT_NONE)
    auc_ceiling_gdp: float | None = field(default=None, metadata=OMIT_NONE)
    patient_auc_ceiling: float | None = field(default=None, metadata=OMIT_NONE)
    reference_models: int | None = field(default=None, metadata=OMIT_NONE)
    apply: Mapping[str, str] | None = field(default=None, metadata=OMIT_NONE)

    @property
    def recommended(self) -> bool:
        return self.status is RecommendationStatus.RECOMMENDED


class LookOutcome(str, Enum):
    """What one look of an adaptive audit settled."""

    FAIL_SETTLED = "fail_settled"
    PASS_SETTLED = "pass_settled"
    OPEN = "open"


class AdaptiveStop(str, Enum):
    """How an adaptive audit ended: a settled look, or the maximum K reached unsettled."""

    FAIL_SETTLED = "fail_settled"
    PASS_SETTLED = "pass_settled"
    UNSETTLED = "unsettled"


class RecommendationStatus(str, Enum):
    """Whether the report carries a DP-SGD recommendation (``unavailable``: says why)."""

    RECOMMENDED = "recommended"
    NOT_NEEDED = "not_needed"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Look:
    """One look of an adaptive audit: the verdict so far at ``reference_models`` models.

    Attributes:
        outcome: ``fail_settled`` (a violation decided with error control across looks),
            ``pass_settled`` (every rule, the power rules included, passes) or ``open``.
        violated: the rules the gate found violated at this look.
        settled: those among them decided with error control (the fail is settled).
    """

    reference_models: int
    outcome: LookOutcome
    violated: tuple[str, ...]
    settled: tuple[str, ...]


@dataclass(frozen=True)
class Adaptive:
    """How an adaptive audit (``reference_models: auto``) chose its K.

    Attributes:
        schedule: the planned looks (K at each); error control spends the policy's FDR
            and ``alpha`` over all of them (Bonferroni).
        fdr_per_look, alpha_per_look: the levels each look's settling tests use.
        stopped: ``fail_settled``, ``pass_settled`` or ``unsettled`` (the maximum was
            reached; the verdict is the last look's).
        reference_models_saved: models not trained against the fixed maximum.
    """

    round_size: int
    max_reference_models: int
    schedule: tuple[int, ...]
    fdr_per_look: float
    alpha_per_look: float
    looks: tuple[Look, ...]
    stopped: AdaptiveStop
    reference_models_saved: int
