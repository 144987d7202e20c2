"""The gate decision: a pure function of a report's figures and a policy.

It collects every violated rule, then decides. It fails closed: evidence a rule needs
but the report lacks (no attack on the release candidate, no testable subgroup tail)
and an under-powered audit (a noise floor at or above the policy's lowest patient-level
AUC limit, a detectable AUC above ``max_detectable_auc``, fewer reference models than
``min_reference_models``) are violations, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from privacy_gate.at_risk import AuditPower, audit_power, berger_boos_beta, detectable_auc
from privacy_gate.config import AuditConfig, GateConfig
from privacy_gate.errors import ReportError
from privacy_gate.noise_floor import MAX_REFERENCE_MODELS_SEARCHED, reference_models_needed
from privacy_gate.patients import benjamini_hochberg_count
from privacy_gate.report_model import AuditReport, Decision, Rule, Status, Violation
from privacy_gate.report_model.figures import Summary
from privacy_gate.report_model.sections import Aggregate
from privacy_gate.subgroups import HIDDEN, ColumnResult, GroupResult, GroupStatus

__all__ = [
    "Decision",
    "Rule",
    "Status",
    "Violation",
    "evaluate_gate",
    "reference_models_for_policy",
]


def _detectable_need(
    gate: GateConfig, limit: float, at_risk_auc: float, n_patients: int
) -> int | None:
    """Smallest even K whose balanced at-risk test detects ``limit`` (None: beyond 4096)."""
    alpha = gate.fdr / max(n_patients, 1)
    beta = berger_boos_beta(gate.fdr, n_patients)

    def ok(k: int) -> bool:
        found = detectable_auc(at_risk_auc, k // 2, k // 2, alpha, gate.detection_power, beta=beta)
        return found <= limit

    lo, hi = 4, MAX_REFERENCE_MODELS_SEARCHED
    if not ok(hi):
        return None
    while hi - lo > 2:  # detectable AUC falls with K: bisect over even K
        mid = (lo + hi) // 4 * 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return lo if ok(lo) else hi


def reference_models_for_policy(
    gate: GateConfig, at_risk_auc: float, n_records: int, n_patients: int
) -> int | None:
    """The K an audit of this pool needs under this policy (balanced plan): the noise
    floor below the lowest patient-level limit, the detectable AUC within
    ``max_detectable_auc``, and at least ``min_reference_models``. None when no K up to
    4096 reaches them; 0 when the policy has no power rule."""
    needs = [gate.min_reference_models or 0]
    limits = gate.patient_auc_limits(at_risk_auc)
    if limits:
        needs.append(reference_models_needed(n_records, min(limits)) or -1)
    if gate.max_detectable_auc is not None:
        needs.append(_detectable_need(gate, gate.max_detectable_auc, at_risk_auc, n_patients) or -1)
    return None if -1 in needs else max(needs)


POWER_HINT = " HINT: with this policy an audit of"
"""How a power rule's message starts its advice to train more reference models."""


def settled_power_message(message: str, settled_by: str, k: int) -> str:
    """A power rule's message after an adaptive audit settled a fail on ``settled_by``: the
    advice to train more models is dropped, since more would not change the verdict.

    >>> message = settled_power_message("Under-powered. HINT: with this policy an audit of "
    ...     "9 records (9 patients) needs at least 48 reference models.", "max_patient_auc", 32)
    >>> message[:60]
    'Under-powered. The fail is settled at K = 32 by max_patient_'
    >>> "48" in message
    False
    """
    head = message.split(POWER_HINT, 1)[0]
    return (
        f"{head} The fail is settled at K = {k} by {settled_by}: more reference models would "
        "not change the verdict."
    )


def _power(
    gate: GateConfig,
    at_risk_auc: float,
    report: AuditReport,
    n_models: int,
    n_records: int,
    n_patients: int,
) -> tuple[list[Violation], int | None]:
    violations = []
    limits = gate.patient_auc_limits(at_risk_auc)
    needed = reference_models_for_policy(gate, at_risk_auc, n_records, n_patients)
    need_text = (
        f"{POWER_HINT} {n_records} records ({n_patients} patients) "
        f"needs at least {needed} reference models."
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
    floor = report.summary.noise_floor.max_patient_auc_q95
    if limits and not floor < min(limits):  # NaN fails: the floor is unknown
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
    if gate.max_detectable_auc is not None:
        power = _audit_power(gate, at_risk_auc, report, n_patients)
        if power is None or not power.detectable_auc <= gate.max_detectable_auc:
            value = None if power is None else power.detectable_auc
            detail = (
                "the report does not state its IN/OUT counts"
                if power is None
                else f"the at-risk test finds a one-record patient with {power.power:.0%} "
                f"power only from a true AUC of {power.detectable_auc:.4f} (level "
                f"{power.alpha:.2g}, {power.n_in} IN / {power.n_out} OUT models)"
            )
            violations.append(
                Violation(
                    Rule.MAX_DETECTABLE_AUC,
                    value,
                    gate.max_detectable_auc,
                    f"Under-powered audit: {detail}, above the policy's "
                    f"{gate.max_detectable_auc}.{need_text}",
                )
            )
    return violations, needed


def _audit_power(
    gate: GateConfig, at_risk_auc: float, report: AuditReport, n_patients: int
) -> AuditPower | None:
    stated = report.summary.power
    if not stated.count_pairs:
        return None
    return audit_power(
        [list(p) for p in stated.count_pairs],
        n_patients,
        at_risk_auc=at_risk_auc,
        fdr=gate.fdr,
        power=gate.detection_power,
        max_records=stated.max_records or 1,
        beta=stated.beta,  # the p-values' own beta; None (older reports): this pool's
    )


def _patients(
    gate: GateConfig, at_risk_auc: float, summary: Summary, n_patients: int
) -> tuple[list[Violation], int]:
    violations = []
    worst = _number(summary.patient_auc.max)
    if gate.max_patient_auc is not None and not worst <= gate.max_patient_auc:
        violations.append(
            Violation(
                Rule.MAX_PATIENT_AUC,
                worst,
                gate.max_patient_auc,
                f"The most exposed patient has AUC {worst:.3f} > {gate.max_patient_auc:.3f}.",
            )
        )
    confident = benjamini_hochberg_count(
        np.asarray(summary.at_risk_p_values, dtype=float), gate.fdr, n_tests=n_patients
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
    if gate.max_fraction_at_risk is not None and not fraction <= gate.max_fraction_at_risk:
        violations.append(
            Violation(
                Rule.MAX_FRACTION_AT_RISK,
                fraction,
                gate.max_fraction_at_risk,
                f"{fraction:.4%} of patients are confidently at risk (AUC > {at_risk_auc}) > "
                f"{gate.max_fraction_at_risk:.4%} allowed.",
            )
        )
    return violations, confident


def _number(value: float | None) -> float:
    """A figure the report could not state (None: not finite) as NaN, which fails a rule."""
    return math.nan if value is None else float(value)


def _worst_first(value: float | None) -> float:
    """Sort key: a value that is not a finite number ranks above every real one."""
    number = _number(value)
    return math.inf if math.isnan(number) else number


def _aggregate(gate: GateConfig, aggregate: Aggregate | None) -> list[Violation]:
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
    attacks = aggregate.attacks
    violations = []
    if gate.max_aggregate_auc is not None:
        # A NaN ranks first, so no attack can hide behind one; and NaN never passes.
        best = max(attacks, key=lambda a: _worst_first(attacks[a].auc))
        auc = _number(attacks[best].auc)
        if not auc <= gate.max_aggregate_auc:
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
        if any(key not in r.tpr_at_fpr for r in attacks.values()):
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
        values = {a: r.tpr_at_fpr[key] for a, r in attacks.items()}
        best = max(values, key=lambda a: _worst_first(values[a]))
        tpr = _number(values[best])
        if not tpr <= limit:
            violations.append(
                Violation(
                    Rule.MAX_AGGREGATE_TPR_AT_FPR,
                    {key: tpr},
                    {key: limit},
                    f"The strongest attack at FPR {key} ({best}) reaches TPR {tpr:.4f} > {limit}.",
                )
            )
    return violations


def _untestable_reason(
    column: str, result: ColumnResult, gate: GateConfig, n_tests: int, min_size: int | None
) -> str | None:
    """Why a column cannot show a violation at all, or None when it can.

    The rule needs evidence, never its absence: a column must have two tested groups and
    a tail whose most extreme outcome (as many tail patients in one group as the group
    has, at most the whole tail) would be flagged, for every group that the
    relative-change limit allows to be flagged at all.
    """
    limit = gate.max_subgroup_relative_change
    assert limit is not None
    tested = {v: g for v, g in result.groups.items() if g.status is GroupStatus.TESTED}
    hidden = [g for g in result.groups.values() if g.status in HIDDEN]
    if len(tested) + len(hidden) < 2:
        return (
            f"column {column!r} has {len(tested) + len(hidden)} tested group(s); a test "
            "needs two. HINT: merge values into fewer groups, or remove the column"
        )
    if hidden:
        return None  # a hidden group can fail the rule on its own exact test
    n_tail = result.tail_patients
    if n_tail == 0:
        return f"the exposed tail holds no patient of a tested group of column {column!r}"
    total_expected = sum(g.expected or 0.0 for g in tested.values())
    for value, group in tested.items():
        size = group.size or 0
        share = (group.expected or 0.0) / total_expected if total_expected > 0 else 0.0
        if share <= 0.0:
            continue  # no expected tail patient: the rule's relative change is undefined
        most = min(n_tail, size)  # a group cannot hold more tail patients than it has
        if most / (n_tail * share) - 1.0 <= limit:
            continue  # even its most extreme outcome stays within the limit
        extreme = float(stats.binomtest(most, n_tail, share).pvalue) * n_tests
        if extreme >= gate.subgroup_alpha:
            return (
                f"the exposed tail of column {column!r} holds {n_tail} patient(s): even "
                f"{most} of them in group {value!r} would not be significant (Bonferroni p "
                f"{min(extreme, 1.0):.2g} >= {gate.subgroup_alpha}). HINT: lower "
                "risk.tail_quantile so the tail holds more patients, or merge small groups"
            )
    return None


def _subgroups(
    gate: GateConfig, subgroups: Mapping[str, ColumnResult], min_size: int | None
) -> list[Violation]:
    if gate.max_subgroup_relative_change is None:
        return []
    limit = gate.max_subgroup_relative_change
    if not subgroups:
        return [
            Violation(
                Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
                None,
                limit,
                "The policy checks max_subgroup_relative_change, but the audit analysed no "
                "subgroup column, so over-representation cannot be ruled out. HINT: name the "
                "columns in 'subgroups' (e.g. subgroups: [sex, race]) or remove the rule.",
            )
        ]
    n_tests = sum(
        g.status is GroupStatus.TESTED or g.status in HIDDEN
        for result in subgroups.values()
        for g in result.groups.values()
    )
    violations = []
    for column, result in subgroups.items():
        reason = _untestable_reason(column, result, gate, n_tests, min_size)
        if reason is not None:
            violations.append(
                Violation(
                    Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
                    None,
                    limit,
                    f"Subgroup over-representation cannot be tested: {reason}.",
                )
            )
            continue
        for value, group in result.groups.items():
            if group.status in HIDDEN and group.significant_at(gate.subgroup_alpha, n_tests):
                violations.append(_hidden_violation(column, group, limit, min_size))
            if group.status is not GroupStatus.TESTED:
                continue
            change, p_adjusted = group.relative_change, group.p_value_adjusted
            if change is None or p_adjusted is None:
                continue
            if not change <= limit and not p_adjusted >= gate.subgroup_alpha:
                violations.append(
                    Violation(
                        Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
                        change,
                        limit,
                        f"Subgroup {column}={value!r} is over-represented among the exposed "
                        f"tail's patients by {change:+.0%} (observed {group.observed}, "
                        f"expected {_number(group.expected):.1f}, Bonferroni p = "
                        f"{p_adjusted:.2g} "
                        f"< {gate.subgroup_alpha}).",
                    )
                )
    return violations


def _hidden_violation(
    column: str, group: GroupResult, limit: float, min_size: int | None
) -> Violation:
    """A hidden group over-represented: the column and a bound, never its figures."""
    which = (
        f"a group of fewer than {min_size} patients"
        if group.status is GroupStatus.TOO_SMALL
        else "a group whose figures are withheld to protect a smaller one"
    )
    return Violation(
        Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
        None,
        limit,
        f"In subgroup column {column!r}, {which} is over-represented in the exposed tail "
        f"(exact one-sided test, Bonferroni p < {group.p_value_bound:g}); its figures are "
        "suppressed.",
    )


def evaluate_gate(report: AuditReport, config: AuditConfig) -> Decision:
    """Evaluate ``config.gate`` on a report's figures (its ``audit``, ``summary``,
    ``aggregate`` and ``subgroups`` sections). Pure: reads the report, writes nothing.
    """
    gate, at_risk = config.gate, config.risk.at_risk_auc
    audit = report.audit
    n_models, n_records, n_patients = audit.reference_models, audit.records, audit.patients
    if n_patients < 1:
        raise ReportError(
            f"The report's audit has {n_patients} patients; an audit needs at least one. "
            "HINT: it was not written by privacy-gate; run a new audit."
        )
    violations, needed = _power(gate, at_risk, report, n_models, n_records, n_patients)
    patient_violations, confident = _patients(gate, at_risk, report.summary, n_patients)
    violations += patient_violations
    violations += _aggregate(gate, report.aggregate)
    violations += _subgroups(gate, report.subgroups, config.risk.min_group_size)
    warnings = []
    if needed and n_models < needed and not violations:
        warnings.append(
            f"Only {n_models} reference models, fewer than the {needed} this pool needs "
            "under the policy's power rules: patient-level figures are noisy (see the noise "
            "floor)."
        )
    return Decision(
        status=Status.FAIL if violations else Status.PASS,
        violations=tuple(violations),
        warnings=tuple(warnings),
        patients_at_risk=confident,
        policy_sha256=config.sha256(),
    )
