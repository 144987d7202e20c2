"""The power rules: an under-powered audit fails, never passes. The noise floor must lie
below the lowest patient-level limit, the at-risk test must detect ``max_detectable_auc``,
and at least ``min_reference_models`` models must be trained. More reference models change
them, so none settles an adaptive fail."""

from __future__ import annotations

import functools
from typing import Any

from privacy_gate.at_risk import AuditPower, audit_power, berger_boos_beta, detectable_auc
from privacy_gate.errors import bounded_number, integer_at_least
from privacy_gate.noise_floor import MAX_REFERENCE_MODELS_SEARCHED, reference_models_needed
from privacy_gate.report_model import AuditReport, Violation
from privacy_gate.rules.base import GateRule, ParseContext, Policy
from privacy_gate.rules.registry import models_needed, patient_auc_limits

__all__ = ["POWER_HINT", "MaxDetectableAuc", "MinReferenceModels", "NoiseFloor"]

POWER_HINT = " HINT: with this policy an audit of"
"""How a power rule's message starts its advice to train more reference models."""

_MORE_MODELS = "more reference models change it: a fail is decided at the last look"


def _need_text(report: AuditReport, policy: Policy) -> str:
    audit = report.audit
    needed = models_needed(policy, audit.records, audit.patients)
    if not needed:
        return ""
    return (
        f"{POWER_HINT} {audit.records} records ({audit.patients} patients) "
        f"needs at least {needed} reference models."
    )


class MinReferenceModels(GateRule):
    key = "min_reference_models"
    example = 64
    listed_when_unset = True
    cannot_settle_because = _MORE_MODELS

    def parse(self, value: Any, context: ParseContext) -> int:
        return integer_at_least("gate", self.key, value, lo=2)

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit, k = policy.limit(self.key), report.audit.reference_models
        if k >= limit:
            return []
        return [
            Violation(
                self.key,
                k,
                limit,
                f"Under-powered audit: {k} reference models, the policy requires "
                f"{limit}.{_need_text(report, policy)}",
            )
        ]

    def reference_models_needed(
        self, policy: Policy, n_records: int, n_patients: int
    ) -> int | None:
        return int(policy.limit(self.key))


class NoiseFloor(GateRule):
    """Derived from the patient-level limits: not a key of the policy."""

    key = "noise_floor"
    in_policy = False
    cannot_settle_because = _MORE_MODELS

    def active(self, policy: Policy) -> bool:
        return bool(patient_auc_limits(policy))

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit = min(patient_auc_limits(policy))
        floor = report.summary.noise_floor.max_patient_auc_q95
        if floor < limit:  # NaN fails: the floor is unknown
            return []
        return [
            Violation(
                self.key,
                floor,
                limit,
                f"Under-powered audit: with {report.audit.reference_models} reference models "
                f"noise alone gives a maximum patient AUC up to {floor:.3f} (95% null), at or "
                f"above the policy's limit {limit:.3f}.{_need_text(report, policy)}",
            )
        ]

    def reference_models_needed(
        self, policy: Policy, n_records: int, n_patients: int
    ) -> int | None:
        return reference_models_needed(n_records, min(patient_auc_limits(policy))) or None


def _detectable_need(policy: Policy, limit: float, n_patients: int) -> int | None:
    return _detectable_k(policy.at_risk_auc, policy.fdr, policy.detection_power, limit, n_patients)


@functools.lru_cache(maxsize=256)
def _detectable_k(
    at_risk_auc: float, fdr: float, power: float, limit: float, n_patients: int
) -> int | None:
    """Smallest even K whose balanced at-risk test detects ``limit`` (None: beyond 4096)."""
    alpha = fdr / max(n_patients, 1)
    beta = berger_boos_beta(fdr, n_patients)

    def ok(k: int) -> bool:
        return detectable_auc(at_risk_auc, k // 2, k // 2, alpha, power, beta=beta) <= limit

    lo, hi = 4, MAX_REFERENCE_MODELS_SEARCHED
    if not ok(hi):
        return None
    while hi - lo > 2:  # detectable AUC falls with K: bisect over even K
        mid = (lo + hi) // 4 * 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return lo if ok(lo) else hi


def _audit_power(report: AuditReport, policy: Policy) -> AuditPower | None:
    stated = report.summary.power
    if not stated.count_pairs:
        return None
    return audit_power(
        [list(p) for p in stated.count_pairs],
        report.audit.patients,
        at_risk_auc=policy.at_risk_auc,
        fdr=policy.fdr,
        power=policy.detection_power,
        max_records=stated.max_records or 1,
        beta=stated.beta,  # the p-values' own beta; None (older reports): this pool's
    )


class MaxDetectableAuc(GateRule):
    """The smallest AUC the at-risk test finds a one-record patient at with
    ``detection_power``."""

    key = "max_detectable_auc"
    example = 0.999
    listed_when_unset = True
    cannot_settle_because = _MORE_MODELS

    def parse(self, value: Any, context: ParseContext) -> float:
        return bounded_number(
            "gate",
            self.key,
            value,
            lo=context.at_risk_auc,
            hi=1.0,
            lo_open=True,
            hint="the smallest AUC the at-risk test must detect lies above risk.at_risk_auc",
        )

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit = policy.limit(self.key)
        power = _audit_power(report, policy)
        if power is not None and power.detectable_auc <= limit:
            return []
        value = None if power is None else power.detectable_auc
        detail = (
            "the report does not state its IN/OUT counts"
            if power is None
            else f"the at-risk test finds a one-record patient with {power.power:.0%} "
            f"power only from a true AUC of {power.detectable_auc:.4f} (level "
            f"{power.alpha:.2g}, {power.n_in} IN / {power.n_out} OUT models)"
        )
        return [
            Violation(
                self.key,
                value,
                limit,
                f"Under-powered audit: {detail}, above the policy's "
                f"{limit}.{_need_text(report, policy)}",
            )
        ]

    def reference_models_needed(
        self, policy: Policy, n_records: int, n_patients: int
    ) -> int | None:
        return _detectable_need(policy, policy.limit(self.key), n_patients)
