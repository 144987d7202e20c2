"""The patient-level rules: the worst patient's AUC and the count and share of patients
confidently at risk (Benjamini-Hochberg over the at-risk p-values)."""

from __future__ import annotations

from typing import Any

import numpy as np

from privacy_gate.auc_bounds import patient_auc_lower_bound
from privacy_gate.errors import bounded_number, integer_at_least
from privacy_gate.patients import benjamini_hochberg_count
from privacy_gate.report_model import AuditReport, Violation
from privacy_gate.rules.base import AucLimitRule, GateRule, ParseContext, Policy, as_number

__all__ = ["MaxFractionAtRisk", "MaxPatientAuc", "MaxPatientsAtRisk", "confident_count"]


def confident_count(report: AuditReport, fdr: float) -> int:
    """Patients confidently at risk: BH at ``fdr`` over every patient of the audit."""
    return benjamini_hochberg_count(
        np.asarray(report.summary.at_risk_p_values, dtype=float),
        fdr,
        n_tests=report.audit.patients,
    )


class MaxPatientAuc(AucLimitRule):
    """The most exposed patient's AUC (a point estimate over all patients)."""

    key = "max_patient_auc"
    example = 0.95
    listed_when_unset = True
    settles = True

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit = policy.limit(self.key)
        worst = as_number(report.summary.patient_auc.max)
        if worst <= limit:
            return []
        return [
            Violation(
                self.key,
                worst,
                limit,
                f"The most exposed patient has AUC {worst:.3f} > {limit:.3f}.",
            )
        ]

    def settled(self, report: AuditReport, policy: Policy, looks: int, alpha: float) -> bool:
        """Only when a lower confidence bound of the worst patient's AUC is above the
        limit, its level spent over the looks, that patient's records and the patients
        (the worst is their maximum, so its estimate is biased upwards). The noise floor
        is no evidence: it bounds records at AUC 0.5, not records just below a limit
        (measured: 200 records at AUC 0.90 settled a false fail at K = 64 in 150 of 150
        runs, while K = 256 passed 76%)."""
        summary, limit = report.summary, policy.limit(self.key)
        worst = summary.patient_auc.max
        if worst is None or not summary.top_patients:
            return False
        records = max(1, summary.top_patients[0].n_records)
        level = alpha / (looks * records * max(1, report.audit.patients))
        lower = patient_auc_lower_bound(worst, summary.power.n_in, summary.power.n_out, level)
        return bool(worst > limit and lower > limit)

    def patient_auc_limit(self, policy: Policy) -> tuple[float, str] | None:
        return float(policy.limit(self.key)), f"gate.{self.key}"


class _AtRiskRule(GateRule):
    """A limit on the confidently-at-risk patients; settles when the count recounted at
    ``fdr / looks`` still exceeds it."""

    listed_when_unset = True
    settles = True

    def _exceeds(self, count: int, n_patients: int, limit: Any) -> bool:
        raise NotImplementedError

    def settled(self, report: AuditReport, policy: Policy, looks: int, alpha: float) -> bool:
        count = confident_count(report, policy.fdr / looks)
        return self._exceeds(count, report.audit.patients, policy.limit(self.key))

    def patient_auc_limit(self, policy: Policy) -> tuple[float, str] | None:
        return policy.at_risk_auc, "risk.at_risk_auc"


class MaxPatientsAtRisk(_AtRiskRule):
    key = "max_patients_at_risk"
    example = 0

    def parse(self, value: Any, context: ParseContext) -> int:
        return integer_at_least("gate", self.key, value, lo=0)

    def _exceeds(self, count: int, n_patients: int, limit: Any) -> bool:
        return bool(count > limit)

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit = policy.limit(self.key)
        confident = confident_count(report, policy.fdr)
        if not self._exceeds(confident, report.audit.patients, limit):
            return []
        return [
            Violation(
                self.key,
                confident,
                limit,
                f"{confident} patient(s) are confidently at risk (AUC > {policy.at_risk_auc}, "
                f"FDR {policy.fdr}) > {limit} allowed.",
            )
        ]


class MaxFractionAtRisk(_AtRiskRule):
    key = "max_fraction_at_risk"
    example = 0.01

    def parse(self, value: Any, context: ParseContext) -> float:
        return bounded_number("gate", self.key, value, lo=0.0, hi=1.0)

    def _exceeds(self, count: int, n_patients: int, limit: Any) -> bool:
        return not count / n_patients <= limit

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit = policy.limit(self.key)
        fraction = confident_count(report, policy.fdr) / report.audit.patients
        if fraction <= limit:
            return []
        return [
            Violation(
                self.key,
                fraction,
                limit,
                f"{fraction:.4%} of patients are confidently at risk (AUC > "
                f"{policy.at_risk_auc}) > {limit:.4%} allowed.",
            )
        ]
