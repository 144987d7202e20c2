"""verify_signed: the one reading of a signed report as evidence, each refusal in the
order the registry's gate gives it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_signing import MODEL_SHA256, RUN_ID, keys, report

from privacy_gate.errors import OutdatedReportError, ReportError
from privacy_gate.mlflow.verification import audit_refusals, genuine_audit_of
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import SignatureError, public_key_fingerprint, sign_report
from privacy_gate.verified import verify_signed

__all__ = ["keys", "report"]  # module fixtures of test_signing, used by name


def _signed(report: dict[str, Any], private: Any) -> dict[str, Any]:
    return sign_report(report, private, run_id=RUN_ID, model_sha256=MODEL_SHA256)


def test_a_signed_report_is_verified_typed_and_keyed(
    report: dict[str, Any], keys: tuple[Any, Any]
) -> None:
    private, public = keys
    signed = _signed(report, private)
    verified = verify_signed(signed, public)
    assert verified.document is signed
    assert verified.report == AuditReport.from_dict(signed)
    assert verified.report.audit.run_id == RUN_ID
    assert verified.key_fingerprint == public_key_fingerprint(public)
    assert genuine_audit_of(signed, public, RUN_ID)
    assert not genuine_audit_of(signed, public, "another-run")


def test_each_refusal_in_order(report: dict[str, Any], keys: tuple[Any, Any]) -> None:
    private, public = keys
    signed = _signed(report, private)
    with pytest.raises(ReportError, match="it is a JSON array, not an object"):
        verify_signed([signed], public)
    with_nan = copy.deepcopy(signed)
    with_nan["summary"]["patient_auc"]["max"] = float("nan")
    with pytest.raises(ReportError, match=r"non-finite number at 'summary\.patient_auc\.max'"):
        verify_signed(with_nan, public)  # before the signature: NaN has two meanings
    tampered = copy.deepcopy(signed)
    tampered["decision"]["status"] = "pass" if signed["decision"]["status"] == "fail" else "fail"
    with pytest.raises(SignatureError):
        verify_signed(tampered, public)
    older = _signed({**report, "schema_version": "1.3"}, private)
    with pytest.raises(OutdatedReportError):
        verify_signed(older, public)
    broken = _signed({**report, "summary": {"patient_auc": "high"}}, private)
    with pytest.raises(ReportError, match="the audit report is malformed: "):
        verify_signed(broken, public)
    # The gate's refusals are these reasons, one each.
    for document in ([signed], with_nan, tampered, older, broken):
        refusals = audit_refusals(document, public_key=public, run_id=RUN_ID, model_files=None)
        assert len(refusals) == 1, refusals
    assert audit_refusals(tampered, public_key=public, run_id=RUN_ID, model_files=None)[
        0
    ].startswith("the audit signature is not valid: ")
