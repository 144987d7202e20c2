"""Is this report a genuine, passing audit of exactly this model version?

Pure checks (no MLflow import) shared by `privacy-gate promote` and the registry-store
plugin, so both refuse for the same reasons. Every reason is collected, then returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privacy_gate.errors import ReportError
from privacy_gate.model_files import NOT_AUDITED, PT2, ModelFiles, differences
from privacy_gate.signing import SignatureError
from privacy_gate.verified import verify_signed

__all__ = ["audit_refusals", "genuine_audit_of", "signed_model_files"]

_SHOWN_DIFFERENCES = 5


def audit_refusals(
    report: Any,
    *,
    public_key: Any,
    run_id: str | None,
    model_files: ModelFiles | None,
    policy_sha256: str | None = None,
    require_pass: bool = True,
    check_files: bool = True,
    allow_pickle: bool = False,
    subject: str = "this model version",
    run_name: str = "this version's run",
) -> list[str]:
    """Reasons to refuse promotion; an empty list means the audit allows it.

    Args:
        report: the audit report found for the version (None: no audit). Any parsed JSON
            value: a malformed one is a reason, never an exception.
        public_key: the verifiers' Ed25519 public key.
        run_id: the run that produced the model version.
        model_files: the manifest of the version's files as they are stored now
            (`privacy_gate.model_files.manifest_of`; None when they could not be read:
            that alone refuses).
        policy_sha256: the policy required for promotion (None: any policy).
        require_pass: refuse an audit whose recorded status is not ``pass`` (False for
            ``privacy-gate check``, which re-evaluates the gate itself).
        check_files: compare ``model_files`` with the signed manifest (False when the
            caller has no model, e.g. a check of a run: the run id still binds).
        allow_pickle: accept a pickle-format model (its forward is code outside its files).
        subject: what the audit is looked up for, in refusals ("this model version").
        run_name: the run the audit must belong to, in refusals ("this version's run").
    """
    if report is None:
        return [f"no privacy audit was found for {subject}"]
    try:
        typed = verify_signed(report, public_key).report
    except SignatureError as exc:
        return [f"the audit signature is not valid: {exc}"]  # nothing else can be trusted
    except ReportError as exc:  # outdated (its figures answer other rules) or malformed
        return [str(exc)]
    reasons: list[str] = []
    audit, decision = typed.audit, typed.decision
    if require_pass and not decision.passed:
        rules = ", ".join(dict.fromkeys(v.rule for v in decision.violations))
        reasons.append(
            f"the audit did not pass (status {decision.status.value!r}; violated: {rules or '-'})"
        )
    if run_id is not None and audit.run_id != run_id:
        reasons.append(f"the audit belongs to run {audit.run_id!r}, not to {run_name} {run_id!r}")
    if check_files:
        reasons.extend(_file_refusals(report, model_files, allow_pickle=allow_pickle))
    if policy_sha256 is not None and audit.policy_sha256 != policy_sha256:
        reasons.append(
            f"the audit used policy {audit.policy_sha256[:12]}..., promotion "
            f"requires {policy_sha256[:12]}..."
        )
    return reasons


def genuine_audit_of(report: Any, public_key: Any, run_id: str) -> bool:
    """A report this key signed, of the current schema, about run ``run_id``: its other
    claims (status, manifest) can be trusted enough to check them all."""
    try:
        return verify_signed(report, public_key).report.audit.run_id == run_id
    except ReportError:
        return False


def signed_model_files(report: Mapping[str, Any]) -> ModelFiles | str:
    """The manifest a (verified) report binds, or why it binds none."""
    audit = report.get("audit")
    files = audit.get("model_files") if isinstance(audit, Mapping) else None
    if files is None:
        return (
            "the audit binds only the weights' state_dict, not the model's files (an older "
            "audit, or the model was never logged with it): a model with the same weights and "
            "another forward would pass. HINT: re-run the audit and log the audited model "
            "with it (privacy_gate.mlflow.log_audited_model, or 'privacy-gate audit' with "
            "mlflow.registered_model)"
        )
    try:
        return ModelFiles.from_dict(files)
    except ReportError as exc:
        return f"the audit report is malformed: {exc}"


def _file_refusals(
    report: Mapping[str, Any], found: ModelFiles | None, *, allow_pickle: bool
) -> list[str]:
    signed = signed_model_files(report)
    if isinstance(signed, str):
        return [signed]
    reasons: list[str] = []
    if signed.format != PT2 and not allow_pickle:
        reasons.append(
            f"the audited model is in {signed.format!r} format: its forward is code outside "
            "the model's files, which the audit cannot bind. HINT: log the model as a "
            "torch.export program (serialization_format='pt2'), or let the registry accept "
            "pickle models (PRIVACY_GATE_ALLOW_PICKLE_MODELS=true) if you control the code "
            "wherever it is loaded"
        )
    if found is None:
        reasons.append("the files of this model version could not be read")
        return reasons
    # Files the audit does not name are counted, not named: on the registry server the
    # version's location is the client's choice, and its listing is not theirs to read.
    changed = [d for d in differences(signed, found) if not d.endswith(NOT_AUDITED)]
    extra = len({f.path for f in found.files} - {f.path for f in signed.files})
    if extra:
        changed.append(f"{extra} file(s) that are not in the audited model")
    if changed:
        shown = "; ".join(changed[:_SHOWN_DIFFERENCES])
        more = len(changed) - _SHOWN_DIFFERENCES
        reasons.append(
            "the model's files are not the audited ones ("
            + shown
            + (f"; and {more} more" if more > 0 else "")
            + ")"
        )
    return reasons
