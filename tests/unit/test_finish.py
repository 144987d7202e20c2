"""The finishing stage: everything a report says is in it before the gate decides, the gate
decides once on that report, the remedy reads the decision, and a decided report is
never finished again."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_pipeline_gate import make_data

from privacy_gate.config import parse_config
from privacy_gate.finish import AuditResult, Sections, finish
from privacy_gate.gate import evaluate_gate
from privacy_gate.pipeline import assess, audit
from privacy_gate.report_model import (
    UNDECIDED,
    DPRecommendation,
    RecommendationStatus,
    Status,
)

STRICT = parse_config(
    {"subgroups": ["site"], "risk": {"at_risk_auc": 0.9}, "gate": {"max_patient_auc": 0.95}}
)
"""A policy the exposed patients of `make_data` violate."""


def _figures(effect: float) -> AuditResult:
    signals, records = make_data(600, 64, effect=effect, n_exposed=40)
    return assess(signals, records, STRICT)


def test_assess_leaves_the_report_undecided_and_unwritable() -> None:
    figures = _figures(3.0)
    assert figures.report.decision is UNDECIDED
    with pytest.raises(ValueError, match="only after the gate decided"):
        figures.report.to_dict()


def test_the_gate_decides_once_on_the_finished_report() -> None:
    figures = _figures(3.0)
    seen: list[AuditResult] = []

    def remedy(decided: AuditResult) -> DPRecommendation:
        seen.append(decided)
        return DPRecommendation(RecommendationStatus.UNAVAILABLE, reason="test remedy")

    finished = finish(
        figures,
        STRICT,
        sections_of=lambda _: Sections(provenance={"note": "from the caller"}, remedy=remedy),
    )
    report = finished.report
    assert report.to_dict()["audit"]["note"] == "from the caller"
    assert report.dp_recommendation is not None
    assert report.dp_recommendation.reason == "test remedy"
    # The remedy saw the decided report, with the caller's provenance already in it.
    assert seen[0].decision is report.decision
    assert seen[0].report.audit == report.audit
    # The decision is the gate's on the finished report (the remedy is not an input).
    assert report.decision == evaluate_gate(report, STRICT)
    assert report.decision.status is Status.FAIL
    # Same figures, same decision as the one-call pipeline.
    signals, records = make_data(600, 64, effect=3.0, n_exposed=40)
    one_call = audit(signals, records, STRICT)
    assert one_call.decision.status is report.decision.status
    assert [v.rule for v in one_call.decision.violations] == [
        v.rule for v in report.decision.violations
    ]


def test_a_decided_report_is_not_finished_again() -> None:
    finished = finish(_figures(0.0), STRICT)
    with pytest.raises(ValueError, match="decided already"):
        finish(finished, STRICT)
    with pytest.raises(ValueError, match="decided already"):
        finish(replace(finished, report=replace(finished.report)), STRICT)
