"""The gate decision: a pure function of a report's figures and a policy.

It asks every rule of the registry (`privacy_gate.rules`) that the policy checks for its
violations, then decides. It fails closed: evidence a rule needs but the report lacks (no
attack on the release candidate, no testable subgroup tail) and an under-powered audit (a
noise floor at or above the policy's lowest patient-level AUC limit, a detectable AUC
above ``max_detectable_auc``, fewer reference models than ``min_reference_models``) are
violations, never a pass.
"""

from __future__ import annotations

from dataclasses import replace

from privacy_gate.caveats import caveats
from privacy_gate.config import AuditConfig
from privacy_gate.errors import ReportError
from privacy_gate.report_model import AdaptiveStop, AuditReport, Decision, Status, Violation
from privacy_gate.rules import (
    POWER_HINT,
    RULES,
    confident_count,
    models_needed,
)

__all__ = [
    "POWER_HINT",
    "Decision",
    "Status",
    "Violation",
    "decided",
    "evaluate_gate",
    "reference_models_for_policy",
    "settled_power_message",
]


def reference_models_for_policy(config: AuditConfig, n_records: int, n_patients: int) -> int | None:
    """The K an audit of this pool needs under this policy (balanced plan): the most any
    of its rules asks for (the noise floor below the lowest patient-level limit, the
    detectable AUC within ``max_detectable_auc``, ``min_reference_models``). None when no
    K up to 4096 reaches them; 0 when the policy has no power rule."""
    return models_needed(config.policy(), n_records, n_patients)


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


def _settled_by(report: AuditReport) -> tuple[str, int] | None:
    """The rules and the K an adaptive audit settled its fail on (None: not settled)."""
    adaptive = report.adaptive
    if adaptive is None or adaptive.stopped is not AdaptiveStop.FAIL_SETTLED:
        return None
    last = adaptive.looks[-1]
    return ", ".join(last.settled), last.reference_models


def evaluate_gate(report: AuditReport, config: AuditConfig) -> Decision:
    """Evaluate ``config.gate`` on a report's figures (its ``audit``, ``summary``,
    ``aggregate``, ``subgroups`` and ``adaptive`` sections), with the caveats the figures
    carry (`privacy_gate.caveats`). Pure: reads the report, writes nothing. After a
    settled adaptive fail, power violations keep their finding but not the advice to
    train more models.
    """
    audit = report.audit
    if audit.patients < 1:
        raise ReportError(
            f"The report's audit has {audit.patients} patients; an audit needs at least one. "
            "HINT: it was not written by privacy-gate; run a new audit."
        )
    policy = config.policy()
    violations = [
        violation
        for rule in RULES.values()
        if rule.active(policy)
        for violation in rule.check(report, policy)
    ]
    settled = _settled_by(report)
    if settled is not None:
        violations = [
            replace(v, message=settled_power_message(v.message, *settled))
            if POWER_HINT in v.message
            else v
            for v in violations
        ]
    needed = models_needed(policy, audit.records, audit.patients)
    warnings = []
    if needed and audit.reference_models < needed and not violations:
        warnings.append(
            f"Only {audit.reference_models} reference models, fewer than the {needed} this "
            "pool needs under the policy's power rules: patient-level figures are noisy (see "
            "the noise floor)."
        )
    warnings += caveats(
        report, at_risk_auc=config.risk.at_risk_auc, min_group_size=config.risk.min_group_size
    )
    return Decision(
        status=Status.FAIL if violations else Status.PASS,
        violations=tuple(violations),
        warnings=tuple(warnings),
        patients_at_risk=confident_count(report, config.gate.fdr),
        policy_sha256=config.sha256(),
    )


def decided(report: AuditReport, config: AuditConfig) -> AuditReport:
    """The report with its decision under ``config`` (and the confident at-risk count at
    the policy's FDR): the one evaluation a written report gets, and what ``check`` and
    the GitHub mode show when they re-evaluate a stored report under another policy."""
    decision = evaluate_gate(report, config)
    summary = report.summary
    if decision.patients_at_risk is not None:
        summary = replace(
            summary,
            patients_at_risk=decision.patients_at_risk,
            fraction_at_risk=decision.patients_at_risk / report.audit.patients,
        )
    return replace(report, decision=decision, summary=summary)
