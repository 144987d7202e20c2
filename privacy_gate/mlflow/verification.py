"""Is this report a genuine, passing audit of exactly this model version?

Pure checks (no MLflow import) shared by `privacy-gate promote` and the registry-store
plugin, so both refuse for the same reasons. Every reason is collected, then returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privacy_gate.errors import ReportError
from privacy_gate.report import outdated_schema_reason
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import verify_report

__all__ = ["audit_refusals"]


def audit_refusals(
    report: Mapping[str, Any] | None,
    *,
    public_key: Any,
    run_id: str | None,
    model_sha256: str | None,
    policy_sha256: str | None = None,
    require_pass: bool = True,
    check_weights: bool = True,
    subject: str = "this model version",
    run_name: str = "this version's run",
) -> list[str]:
    """Reasons to refuse promotion; an empty list means the audit allows it.

    Args:
        report: the audit report found for the version (None: no audit).
        public_key: the verifiers' Ed25519 public key.
        run_id: the run that produced the model version.
        model_sha256: the digest recomputed from the version's model files (None when
            it could not be computed: that alone refuses).
        policy_sha256: the policy required for promotion (None: any policy).
        require_pass: refuse an audit whose recorded status is not ``pass`` (False for
            ``privacy-gate check``, which re-evaluates the gate itself).
        check_weights: compare ``model_sha256`` with the audited weights (False when the
            caller has no model to digest, e.g. a check of a run: the run id still binds).
        subject: what the audit is looked up for, in refusals ("this model version").
        run_name: the run the audit must belong to, in refusals ("this version's run").
    """
    if report is None:
        return [f"no privacy audit was found for {subject} (run privacy-gate first)"]
    reasons: list[str] = []
    try:
        verify_report(report, public_key)
    except ReportError as exc:
        reasons.append(f"the audit signature is not valid: {exc}")
        return reasons  # nothing else in an unverified report can be trusted
    outdated = outdated_schema_reason(report)
    if outdated is not None:
        reasons.append(outdated)
        return reasons  # its figures and decision answer rules that no longer exist
    try:
        typed = AuditReport.from_dict(report)
    except ReportError as exc:
        reasons.append(f"the audit report is malformed: {exc}")
        return reasons
    audit, decision = typed.audit, typed.decision
    if require_pass and not decision.passed:
        rules = ", ".join(dict.fromkeys(v.rule.value for v in decision.violations))
        reasons.append(
            f"the audit did not pass (status {decision.status.value!r}; violated: {rules or '-'})"
        )
    if run_id is not None and audit.run_id != run_id:
        reasons.append(f"the audit belongs to run {audit.run_id!r}, not to {run_name} {run_id!r}")
    if not check_weights:
        pass
    elif model_sha256 is None:
        reasons.append("the weights of this model version could not be digested")
    elif audit.model_sha256 != model_sha256:
        reasons.append(
            "the model's weights changed after the audit (audited "
            f"{str(audit.model_sha256)[:12]}..., registered {model_sha256[:12]}...)"
        )
    if policy_sha256 is not None and audit.policy_sha256 != policy_sha256:
        reasons.append(
            f"the audit used policy {audit.policy_sha256[:12]}..., promotion "
            f"requires {policy_sha256[:12]}..."
        )
    return reasons
