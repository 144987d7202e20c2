"""A signed report read as evidence: one function (`verify_signed`) takes a parsed JSON
document and a public key to a `VerifiedAudit`, or to the one reason it is none. The
registry's gate and promotion (`privacy_gate.mlflow.verification`), ``check`` and
``diff`` read signed reports only through it, in the same order: an object, finite
numbers (canonical JSON would give a NaN two meanings), a valid signature, the current
schema, a well-formed report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from privacy_gate.errors import OutdatedReportError, ReportError
from privacy_gate.report import non_finite_field, outdated_schema_reason
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import public_key_fingerprint, verify_report

__all__ = ["VerifiedAudit", "verify_signed"]


@dataclass(frozen=True)
class VerifiedAudit:
    """A report whose signature verified under ``key_fingerprint``, as signed
    (``document``) and typed (``report``)."""

    document: Mapping[str, Any]
    report: AuditReport
    key_fingerprint: str


def _kind(value: Any) -> str:
    return {list: "array", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), "number"
    )


def verify_signed(document: Any, public_key: Any) -> VerifiedAudit:
    """The verified audit in ``document``.

    Raises:
        privacy_gate.signing.SignatureError: the signature is missing or does not verify
            (nothing else in the document can then be trusted).
        OutdatedReportError: a validly signed report of an older schema, whose figures
            answer rules that no longer exist.
        ReportError: not an object, a non-finite number, or a malformed report.
    """
    if not isinstance(document, Mapping):
        raise ReportError(
            f"the audit report is malformed: it is a JSON {_kind(document)}, not an object"
        )
    bad = non_finite_field(document)
    if bad is not None:
        raise ReportError(f"the audit report holds a non-finite number at {bad!r}")
    verify_report(document, public_key)
    outdated = outdated_schema_reason(document)
    if outdated is not None:
        raise OutdatedReportError(outdated)
    try:
        report = AuditReport.from_dict(document)
    except ReportError as exc:
        raise ReportError(f"the audit report is malformed: {exc}") from None
    return VerifiedAudit(document, report, public_key_fingerprint(public_key))
