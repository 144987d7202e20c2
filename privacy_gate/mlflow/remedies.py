"""What to do about a refused promotion, said the same way everywhere.

The gated registry's 403, ``privacy-gate promote`` and ``privacy-gate check`` list every
reason (`privacy_gate.mlflow.verification.audit_refusals` collects them), then one remedy
per kind of reason (the DP-SGD recommendation when the audit failed) and where the report
is. The reasons are this package's own sentences; each remedy names the phrases of the
reasons it answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privacy_gate.errors import ReportError
from privacy_gate.render.recommendation import recommendation_lines
from privacy_gate.report_model import AuditReport

__all__ = ["REMEDIES", "refusal_message", "remedies", "remedy_lines", "report_location"]

AUDIT_COMMAND = "privacy-gate audit --config audit.yaml"

#: (phrases of the reasons it answers, the remedy), in the order they are shown
REMEDIES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("no privacy audit was found", "has no run, so it has no audit", "names no run"),
        f"Audit the model: `{AUDIT_COMMAND}` with mlflow.registered_model set trains, audits, "
        "signs and registers it in one run; for a model trained elsewhere, log the audit and "
        "the audited model into the version's run (privacy_gate.mlflow.log_report, then "
        "privacy_gate.mlflow.log_audited_model).",
    ),
    (
        ("signature is not valid",),
        "Sign the audit on the auditing side: run it with PRIVACY_GATE_SIGNING_KEY set; the "
        "registry verifies with the matching PRIVACY_GATE_PUBLIC_KEY.",
    ),
    (
        (
            "report schema",
            "schema_version",
            "report is malformed",
            "non-finite number",
            "audit report is",
        ),
        f"Run a new audit with this privacy-gate version (`{AUDIT_COMMAND}`).",
    ),
    (
        ("belongs to run",),
        "Register the version from the audit's own run (the run the audit was logged into).",
    ),
    (
        (
            "files are not the audited ones",
            "binds only the weights",
            "could not be read",
            "names its files indirectly",
            "names no files",
            "its forward is code",
        ),
        "Register the model the audit logged (models:/<its model id>), unchanged, or audit "
        "the model you are registering.",
    ),
    (
        ("used policy",),
        "Audit under the policy that promotion requires (`privacy-gate policy` prints the "
        "packaged one and its digest).",
    ),
    (
        ("audit public key",),
        "Registry operator: set PRIVACY_GATE_PUBLIC_KEY on the server to the auditing "
        "side's public key.",
    ),
)
DID_NOT_PASS = "the audit did not pass"


def _typed(report: Any) -> AuditReport | None:
    if isinstance(report, AuditReport):
        return report
    try:
        return AuditReport.from_dict(report) if isinstance(report, dict) else None
    except ReportError:
        return None


def remedies(reasons: Sequence[str], report: Any) -> list[str]:
    """One remedy per kind of reason; for a failed audit, its DP-SGD recommendation."""
    found = [
        remedy
        for phrases, remedy in REMEDIES
        if any(phrase in reason for reason in reasons for phrase in phrases)
    ]
    if any(DID_NOT_PASS in reason for reason in reasons):
        typed = _typed(report)
        lines = recommendation_lines(typed)[:1] if typed is not None else []
        if lines and typed is not None and typed.dp_recommendation is not None:
            lines[0] += " (how to apply it: the report's DP-SGD recommendation)"
        found += [*lines, f"Then audit the retrained model again (`{AUDIT_COMMAND}`)."]
    if not found and reasons:
        found.append(f"Run `{AUDIT_COMMAND}` and register the model it logs.")
    return found


def remedy_lines(reasons: Sequence[str], report: Any) -> list[str]:
    """The "What to do:" block of a refusal: a bullet per remedy, its own indented lines
    (a recommendation's apply snippets) under it; empty when there is nothing to say."""
    todo = remedies(reasons, report)
    if not todo:
        return []
    return ["What to do:", *(f"  {line}" if line[:1] == " " else f"  - {line}" for line in todo)]


def report_location(run_id: str | None) -> str | None:
    """Where a run's audit report is, for a refusal message."""
    if not run_id:
        return None
    return (
        f"runs:/{run_id}/privacy_gate/report.html (signed JSON: "
        f"runs:/{run_id}/privacy_gate/report.json)"
    )


def refusal_message(
    head: str,
    reasons: Sequence[str],
    report: Any,
    run_id: str | None,
    details: Sequence[str] = (),
) -> str:
    """``head``, every reason (then ``details``, e.g. the violated rules), what to do, and
    where the report is: one line each.

    >>> print(refusal_message("Refused", ["the audit belongs to run 'a', not 'b'"], None, "b"))
    Refused:
      - the audit belongs to run 'a', not 'b'
    What to do:
      - Register the version from the audit's own run (the run the audit was logged into).
    Report: runs:/b/privacy_gate/report.html (signed JSON: runs:/b/privacy_gate/report.json)
    """
    lines = [f"{head}:", *(f"  - {reason}" for reason in reasons), *details]
    lines += remedy_lines(reasons, report)
    where = report_location(run_id)
    if where is not None:
        lines.append(f"Report: {where}")
    return "\n".join(lines)
