"""Adaptive audits: train reference models in rounds and stop when the verdict is settled.

Looks follow a doubling schedule (``round_size``, ``2 round_size``, ``4 round_size``, ...,
``max_reference_models``), so an audit has at most ``log2(max / round_size) + 2`` looks.
Error control holds across them by Bonferroni over the planned looks: a look settles a
fail only with tests at ``fdr / looks`` and ``alpha / looks``.

Settling a fail: each violated rule decides in its ``GateRule.settled``
(`privacy_gate.rules`, whose docstrings give each rule's evidence), with its error spent
over the looks. A rule that more reference models can change (the power rules, the TPR at
a low FPR) never settles a fail. A pass is settled when the gate passes, which includes
the power rules, so a pass is never declared at a K below what they need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privacy_gate.auc_bounds import auc_lower_bound, patient_auc_lower_bound
from privacy_gate.config import AuditConfig
from privacy_gate.errors import ConfigError, invalid_value
from privacy_gate.report_model import Adaptive, AdaptiveStop, AuditReport, Look, LookOutcome
from privacy_gate.rules import RULES

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


def settle(report: AuditReport, config: AuditConfig, plan: AdaptivePlan) -> Look:
    """Whether the decided report of one look settles the verdict (see the module)."""
    n_looks, policy = len(plan.schedule), config.policy()
    violated = tuple(dict.fromkeys(v.rule for v in report.decision.violations))
    settled = tuple(
        key
        for key in violated
        if RULES[key].settles and RULES[key].settled(report, policy, n_looks, plan.alpha)
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
        violated=violated,
        settled=settled,
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
