"""The gate decision: a pure function of a report's figures and a policy.

It collects every violated rule, then decides. It fails closed: evidence a rule needs
but the report lacks (no attack on the release candidate, no subgroup test) and an
under-powered audit (too few reference models, or a noise floor at or above the
policy's lowest patient-level AUC limit) are violations, never a pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from privacy_gate.config import AuditConfig, GateConfig
from privacy_gate.noise_floor import reference_models_needed
from privacy_gate.patients import benjamini_hochberg_count

__all__ = ["Decision", "Rule", "Status", "Violation", "evaluate_gate"]

RECOMMENDED_REFERENCE_MODELS = 64


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 2 error."""
        return {Status.PASS: 0, Status.FAIL: 1, Status.ERROR: 2}[self]


class Rule(str, Enum):
    MIN_REFERENCE_MODELS = "min_reference_models"
    NOISE_FLOOR = "noise_floor"
    MAX_PATIENT_AUC = "max_patient_auc"
    MAX_PATIENTS_AT_RISK = "max_patients_at_risk"
    MAX_FRACTION_AT_RISK = "max_fraction_at_risk"
    MAX_AGGREGATE_AUC = "max_aggregate_auc"
    MAX_AGGREGATE_TPR_AT_FPR = "max_aggregate_tpr_at_fpr"
    MAX_SUBGROUP_RELATIVE_CHANGE = "max_subgroup_relative_change"
    MAX_TAIL_SE = "max_tail_se"


@dataclass(frozen=True)
class Violation:
    """One violated rule with the measured value and the policy's limit."""

    rule: Rule
    value: Any
    limit: Any
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.value,
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
        }


@dataclass(frozen=True)
class Decision:
    """The gate's outcome: status, every violated rule, caveats, and the confident
    at-risk count recomputed at the policy's FDR."""

    status: Status
    violations: tuple[Violation, ...] = ()
    warnings: tuple[str, ...] = ()
    patients_at_risk: int | None = None

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "violations": [v.to_dict() for v in self.violations],
            "warnings": list(self.warnings),
        }

    def one_line(self) -> str:
        """A one-line verdict for terminals and CI logs."""
        if self.status is Status.PASS:
            return "privacy-gate: PASS"
        rules = ", ".join(dict.fromkeys(v.rule.value for v in self.violations))
        return f"privacy-gate: {self.status.value.upper()} ({rules})"


def _power(
    gate: GateConfig, at_risk_auc: float, summary: Mapping[str, Any], n_models: int, n_records: int
) -> list[Violation]:
    violations = []
    limits = gate.patient_auc_limits(at_risk_auc)
    needed = reference_models_needed(n_records, min(limits)) if limits else None
    need_text = (
        f" HINT: this audit pool ({n_records} records) needs at least {needed} reference models."
        if needed
        else ""
    )
    if gate.min_reference_models is not None and n_models < gate.min_reference_models:
        violations.append(
            Violation(
                Rule.MIN_REFERENCE_MODELS,
                n_models,
                gate.min_reference_models,
                f"Under-powered audit: {n_models} reference models, the policy requires "
                f"{gate.min_reference_models}.{need_text}",
            )
        )
    floor = summary["noise_floor"]["max_patient_auc_q95"]
    if limits and floor >= min(limits):
        violations.append(
            Violation(
                Rule.NOISE_FLOOR,
                floor,
                min(limits),
                f"Under-powered audit: with {n_models} reference models noise alone gives a "
                f"maximum patient AUC up to {floor:.3f} (95% null), at or above the policy's "
                f"limit {min(limits):.3f}.{need_text}",
            )
        )
    return violations


def _patients(
    gate: GateConfig, at_risk_auc: float, summary: Mapping[str, Any], n_patients: int
) -> tuple[list[Violation], int]:
    violations = []
    worst = float(summary["patient_auc"]["max"])
    if gate.max_patient_auc is not None and worst > gate.max_patient_auc:
        violations.append(
            Violation(
                Rule.MAX_PATIENT_AUC,
                worst,
                gate.max_patient_auc,
                f"The most exposed patient has AUC {worst:.3f} > {gate.max_patient_auc:.3f}.",
            )
        )
    confident = benjamini_hochberg_count(
        np.asarray(summary["at_risk_p_values"], dtype=float), gate.fdr, n_tests=n_patients
    )
    if gate.max_patients_at_risk is not None and confident > gate.max_patients_at_risk:
        violations.append(
            Violation(
                Rule.MAX_PATIENTS_AT_RISK,
                confident,
                gate.max_patients_at_risk,
                f"{confident} patient(s) are confidently at risk (AUC > {at_risk_auc}, FDR "
                f"{gate.fdr}) > {gate.max_patients_at_risk} allowed.",
            )
        )
    fraction = confident / n_patients
    if gate.max_fraction_at_risk is not None and fraction > gate.max_fraction_at_risk:
        violations.append(
            Violation(
                Rule.MAX_FRACTION_AT_RISK,
                fraction,
                gate.max_fraction_at_risk,
                f"{fraction:.4%} of patients are confidently at risk (AUC > {at_risk_auc}) > "
                f"{gate.max_fraction_at_risk:.4%} allowed.",
            )
        )
    se = summary.get("tail_se")
    if gate.max_tail_se is not None and (se is None or se > gate.max_tail_se):
        violations.append(
            Violation(
                Rule.MAX_TAIL_SE,
                se,
                gate.max_tail_se,
                f"The tail's record AUCs are too imprecise (mean SE {se} > {gate.max_tail_se})."
                " HINT: train more reference models.",
            )
        )
    return violations, confident


def _aggregate(gate: GateConfig, aggregate: Mapping[str, Any] | None) -> list[Violation]:
    tpr_rule = gate.max_aggregate_tpr_at_fpr
    configured: list[tuple[Rule, Any]] = []
    if gate.max_aggregate_auc is not None:
        configured.append((Rule.MAX_AGGREGATE_AUC, gate.max_aggregate_auc))
    if tpr_rule is not None:
        configured.append((Rule.MAX_AGGREGATE_TPR_AT_FPR, {repr(f): t for f, t in tpr_rule}))
    if aggregate is None:
        return [
            Violation(
                rule,
                None,
                limit,
                f"The policy checks {rule.value}, but the audit has no release-candidate "
                "signals. HINT: add target_scores and target_members, or remove "
                "gate.max_aggregate_* from the policy.",
            )
            for rule, limit in configured
        ]
    attacks = aggregate["attacks"]
    violations = []
    if gate.max_aggregate_auc is not None:
        best = max(attacks, key=lambda a: attacks[a]["auc"])
        auc = float(attacks[best]["auc"])
        if auc > gate.max_aggregate_auc:
            violations.append(
                Violation(
                    Rule.MAX_AGGREGATE_AUC,
                    auc,
                    gate.max_aggregate_auc,
                    f"The strongest attack ({best}) reaches AUC {auc:.3f} > "
                    f"{gate.max_aggregate_auc:.3f} on the release candidate.",
                )
            )
    for fpr, limit in gate.max_aggregate_tpr_at_fpr or ():
        key = repr(float(fpr))
        values = {a: r["tpr_at_fpr"].get(key) for a, r in attacks.items()}
        if any(v is None for v in values.values()):
            violations.append(
                Violation(
                    Rule.MAX_AGGREGATE_TPR_AT_FPR,
                    None,
                    limit,
                    f"The audit has no TPR at FPR {key}. HINT: run a new "
                    "audit with this FPR in risk.fpr.",
                )
            )
            continue
        best = max(values, key=lambda a: values[a])
        tpr = float(values[best])
        if tpr > limit:
            violations.append(
                Violation(
                    Rule.MAX_AGGREGATE_TPR_AT_FPR,
                    {key: tpr},
                    {key: limit},
                    f"The strongest attack at FPR {key} ({best}) reaches TPR {tpr:.4f} > {limit}.",
                )
            )
    return violations


def _subgroups(gate: GateConfig, subgroups: Mapping[str, Any]) -> tuple[list[Violation], list[str]]:
    if gate.max_subgroup_relative_change is None:
        return [], []
    tested = [
        (column, value, group)
        for column, result in subgroups.items()
        for value, group in result["groups"].items()
        if group["status"] == "tested"
    ]
    if not tested:
        return [], [
            "Rule max_subgroup_relative_change not evaluated: no subgroup with at least "
            "min_group_size records was audited (set 'subgroups' in the config)."
        ]
    violations = []
    for column, value, group in tested:
        change, p = group["relative_change"], group["p_value"]
        if change is None or p is None:
            continue
        p_adjusted = min(1.0, p * len(tested))
        if change > gate.max_subgroup_relative_change and p_adjusted < gate.subgroup_alpha:
            violations.append(
                Violation(
                    Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
                    change,
                    gate.max_subgroup_relative_change,
                    f"Subgroup {column}={value!r} is over-represented in the exposed tail by "
                    f"{change:+.0%} (observed {group['observed']}, expected "
                    f"{group['expected']:.1f}, Bonferroni p = {p_adjusted:.2g} < "
                    f"{gate.subgroup_alpha}).",
                )
            )
    return violations, []


def evaluate_gate(report: Mapping[str, Any], config: AuditConfig) -> Decision:
    """Evaluate ``config.gate`` on a report's figures (its ``audit``, ``summary``,
    ``aggregate`` and ``subgroups`` sections). Pure: reads the report, writes nothing.
    """
    gate, at_risk = config.gate, config.risk.at_risk_auc
    audit, summary = report["audit"], report["summary"]
    n_models, n_records = int(audit["reference_models"]), int(audit["records"])
    violations = _power(gate, at_risk, summary, n_models, n_records)
    patient_violations, confident = _patients(gate, at_risk, summary, int(audit["patients"]))
    violations += patient_violations
    violations += _aggregate(gate, report.get("aggregate"))
    subgroup_violations, warnings = _subgroups(gate, report.get("subgroups") or {})
    violations += subgroup_violations
    if n_models < RECOMMENDED_REFERENCE_MODELS:
        warnings.append(
            f"Only {n_models} reference models: patient-level figures are noisy "
            f"(see the noise floor); {RECOMMENDED_REFERENCE_MODELS} or more are "
            "recommended."
        )
    return Decision(
        status=Status.FAIL if violations else Status.PASS,
        violations=tuple(violations),
        warnings=tuple(warnings),
        patients_at_risk=confident,
    )
