"""Adaptive audits: train reference models in rounds and stop when the verdict is settled.

Looks follow a doubling schedule (``round_size``, ``2 round_size``, ``4 round_size``, ...,
``max_reference_models``), so an audit has at most ``log2(max / round_size) + 2`` looks.
Error control holds across them by Bonferroni over the planned looks: a look settles a
fail only with tests at ``fdr / looks`` and ``alpha / looks``.

Settling a fail (each rule, violated at the look):

- ``max_patients_at_risk``, ``max_fraction_at_risk``: the calibrated at-risk count,
  recounted by Benjamini-Hochberg at ``fdr / looks``, still exceeds the limit;
- ``max_aggregate_auc``: the Hanley-McNeil lower confidence bound of some attack's AUC,
  at ``alpha / (looks * attacks)``, is above the limit;
- ``max_subgroup_relative_change``: a group over the limit has a Bonferroni p-value below
  ``subgroup_alpha / looks``;
- ``max_patient_auc`` (a point estimate): only when a lower confidence bound of the worst
  patient's AUC is above the limit (`patient_auc_lower_bound`: probit scale, delta-method
  variance of ``d`` at the audit's IN/OUT counts), its level ``alpha`` spent over the
  looks, that patient's records and the patients (the worst is the maximum of them all,
  so its estimate is biased upwards). The noise floor is no evidence here: it bounds
  records at AUC 0.5, not records just below a limit (measured: 200 records at AUC 0.90
  settled a false fail at K = 64 in 150 of 150 runs, while K = 256 passed 76%).

The power rules (``noise_floor``, ``max_detectable_auc``, ``min_reference_models``) and
``max_aggregate_tpr_at_fpr`` never settle a fail: more models can change them. A pass is
settled when the gate passes, which includes the power rules, so a pass is never declared
at a K below what they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from privacy_gate.config import AuditConfig
from privacy_gate.errors import ConfigError, invalid_value
from privacy_gate.patients import benjamini_hochberg_count
from privacy_gate.record_stats import hanley_mcneil_se
from privacy_gate.report_model import Adaptive, AdaptiveStop, AuditReport, Look, LookOutcome, Rule
from privacy_gate.subgroups import HIDDEN, GroupStatus

__all__ = [
    "AUTO",
    "DEFAULT_MAX_REFERENCE_MODELS",
    "DEFAULT_ROUND_SIZE",
    "AdaptivePlan",
    "LookOutcome",
    "auc_lower_bound",
    "parse_reference_models",
    "patient_auc_lower_bound",
    "settle",
]

DEFAULT_ROUND_SIZE = 16
"""Reference models of the first look (one batched group)."""
DEFAULT_MAX_REFERENCE_MODELS = 256
DEFAULT_ALPHA = 0.05


_SETTLEABLE = {
    Rule.MAX_PATIENTS_AT_RISK,
    Rule.MAX_FRACTION_AT_RISK,
    Rule.MAX_AGGREGATE_AUC,
    Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
    Rule.MAX_PATIENT_AUC,
}


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(
            invalid_value(name, "the adaptive audit", f"an even integer >= {minimum}", value)
        )
    if value % 2:
        raise ConfigError(
            invalid_value(
                name,
                "the adaptive audit",
                "even (each patient is IN for exactly half of the models of every round)",
                value,
                f"use {int(value) + 1}",
            )
        )
    return int(value)


@dataclass(frozen=True)
class AdaptivePlan:
    """The settings of ``reference_models: auto``.

    Attributes:
        round_size: models of the first look; later looks double the count.
        max_reference_models: the most models trained; an audit that has not settled
            there ends with the verdict of its last look.
        alpha: the family-wise level of the settling tests other than the at-risk count
            (the aggregate AUC's lower bound), spent over the looks.
    """

    round_size: int = DEFAULT_ROUND_SIZE
    max_reference_models: int = DEFAULT_MAX_REFERENCE_MODELS
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        _check_int("round_size", self.round_size, 2)
        _check_int("max_reference_models", self.max_reference_models, 2)
        if self.max_reference_models < self.round_size:
            raise ConfigError(
                invalid_value(
                    "max_reference_models",
                    "the adaptive audit",
                    f"at least one round ({self.round_size} models)",
                    self.max_reference_models,
                    "raise max_reference_models or lower round_size",
                )
            )
        if isinstance(self.alpha, bool) or not 0.0 < float(self.alpha) < 1.0:
            raise ConfigError(
                invalid_value("alpha", "the adaptive audit", "a float in (0, 1)", self.alpha)
            )

    @property
    def schedule(self) -> tuple[int, ...]:
        """K at each planned look: the round size doubled until the maximum."""
        looks = [self.round_size]
        while looks[-1] < self.max_reference_models:
            looks.append(min(2 * looks[-1], self.max_reference_models))
        return tuple(looks)

    def record(self, looks: tuple[Look, ...], config: AuditConfig) -> Adaptive:
        """The report's ``adaptive`` section for the looks taken."""
        last = looks[-1]
        stopped = (
            AdaptiveStop.UNSETTLED
            if last.outcome is LookOutcome.OPEN
            else AdaptiveStop(last.outcome.value)
        )
        n_looks = len(self.schedule)
        return Adaptive(
            round_size=self.round_size,
            max_reference_models=self.max_reference_models,
            schedule=self.schedule,
            fdr_per_look=config.gate.fdr / n_looks,
            alpha_per_look=self.alpha / n_looks,
            looks=looks,
            stopped=stopped,
            reference_models_saved=self.max_reference_models - last.reference_models,
        )


def auc_lower_bound(auc: float, positives: int, negatives: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound of an AUC (normal approximation,
    `privacy_gate.record_stats.hanley_mcneil_se`)."""
    if positives < 1 or negatives < 1 or not math.isfinite(auc):
        return -math.inf
    z = float(special.ndtri(1.0 - alpha))
    se = hanley_mcneil_se(np.array([auc]), np.array([positives]), np.array([negatives]))
    return auc - z * float(se[0])


def patient_auc_lower_bound(auc: float, n_in: int, n_out: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound of a record AUC ``Phi(d)`` on the
    probit scale: ``d - z sqrt(var)``, with the delta-method variance of
    ``d = (mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2)`` under Gaussian scores of equal
    variance, ``(1/n_in + 1/n_out) (1/2 + d^2/8)`` (``1/h + d^2/(4h)`` at
    ``n_in = n_out = h``). Unlike the SE at the estimate it does not collapse near AUC 1.

    >>> round(patient_auc_lower_bound(0.9, 32, 32, 0.05), 3)
    0.825
    """
    if n_in < 2 or n_out < 2 or not math.isfinite(auc):
        return -math.inf
    d = float(special.ndtri(min(max(auc, 0.5), 1.0 - 1e-10)))
    variance = (1.0 / n_in + 1.0 / n_out) * (0.5 + d * d / 8.0)
    z = float(special.ndtri(1.0 - alpha))
    return float(special.ndtr(d - z * math.sqrt(variance)))


def _settled(
    rule: Rule, report: AuditReport, config: AuditConfig, n_looks: int, alpha: float
) -> bool:
    gate, summary = config.gate, report.summary
    n_patients = report.audit.patients
    if rule in (Rule.MAX_PATIENTS_AT_RISK, Rule.MAX_FRACTION_AT_RISK):
        count = benjamini_hochberg_count(
            np.asarray(summary.at_risk_p_values, dtype=float),
            gate.fdr / n_looks,
            n_tests=n_patients,
        )
        if rule is Rule.MAX_PATIENTS_AT_RISK:
            return gate.max_patients_at_risk is not None and count > gate.max_patients_at_risk
        return (
            gate.max_fraction_at_risk is not None and count / n_patients > gate.max_fraction_at_risk
        )
    if rule is Rule.MAX_PATIENT_AUC:
        worst, limit = summary.patient_auc.max, gate.max_patient_auc
        if worst is None or limit is None or not summary.top_patients:
            return False
        records = max(1, summary.top_patients[0].n_records)
        level = alpha / (n_looks * records * max(1, n_patients))
        lower = patient_auc_lower_bound(worst, summary.power.n_in, summary.power.n_out, level)
        return worst > limit and lower > limit
    if rule is Rule.MAX_AGGREGATE_AUC:
        aggregate, limit = report.aggregate, gate.max_aggregate_auc
        if aggregate is None or limit is None or not aggregate.attacks:
            return False
        level = alpha / (n_looks * len(aggregate.attacks))
        return any(
            attack.auc is not None
            and auc_lower_bound(attack.auc, aggregate.members, aggregate.non_members, level) > limit
            for attack in aggregate.attacks.values()
        )
    if rule is Rule.MAX_SUBGROUP_RELATIVE_CHANGE:
        limit = gate.max_subgroup_relative_change
        return limit is not None and any(
            (
                g.status is GroupStatus.TESTED
                and g.relative_change is not None
                and g.p_value_adjusted is not None
                and g.relative_change > limit
                and g.p_value_adjusted < gate.subgroup_alpha / n_looks
            )
            or (
                g.status in HIDDEN
                and g.p_value_bound is not None
                and g.p_value_bound <= gate.subgroup_alpha / n_looks
            )
            for column in report.subgroups.values()
            for g in column.groups.values()
        )
    return False


def settle(report: AuditReport, config: AuditConfig, plan: AdaptivePlan) -> Look:
    """Whether the decided report of one look settles the verdict (see the module)."""
    n_looks = len(plan.schedule)
    violated = tuple(dict.fromkeys(v.rule for v in report.decision.violations))
    settled = tuple(
        rule
        for rule in violated
        if rule in _SETTLEABLE and _settled(rule, report, config, n_looks, plan.alpha)
    )
    if settled:
        outcome = LookOutcome.FAIL_SETTLED
    elif report.decision.passed:
        outcome = LookOutcome.PASS_SETTLED
    else:
        outcome = LookOutcome.OPEN
    return Look(
        reference_models=report.audit.reference_models,
        outcome=outcome,
        violated=tuple(r.value for r in violated),
        settled=tuple(r.value for r in settled),
    )


AUTO = "auto"


def parse_reference_models(
    value: object,
    *,
    owner: str,
    max_reference_models: object = None,
    round_size: object = None,
    error: type[ValueError] = ConfigError,
) -> int | AdaptivePlan:
    """``reference_models`` as audit.yaml, the callback, the evaluator and `run_audit` take
    it: an even K, or ``"auto"`` (an `AdaptivePlan`, with ``max_reference_models`` and
    ``round_size`` when given). Those two apply to ``auto`` only: beside a fixed K they
    would do nothing. ``error`` is the class raised for a bad K (`InputError` for a
    Python argument, `ConfigError` for a config file)."""
    if isinstance(value, AdaptivePlan):
        return value
    if isinstance(value, str) and value.strip().lower() == AUTO:
        options = {
            name: given
            for name, given in (
                ("max_reference_models", max_reference_models),
                ("round_size", round_size),
            )
            if given is not None
        }
        return AdaptivePlan(**options)  # type: ignore[arg-type]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 2 or value % 2:
        raise error(
            invalid_value(
                "reference_models",
                owner,
                "an even integer >= 2 or 'auto'",
                value,
                "64 is the default; 'auto' trains in rounds until the verdict is settled",
            )
        )
    for name, given in (("max_reference_models", max_reference_models), ("round_size", round_size)):
        if given is not None:
            raise ConfigError(
                invalid_value(
                    name,
                    owner,
                    "given only with reference_models: auto",
                    given,
                    f"set reference_models: auto, or drop {name}",
                )
            )
    return int(value)
