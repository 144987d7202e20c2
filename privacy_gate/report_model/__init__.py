"""The typed report: every section a frozen dataclass, serialised to the JSON schema.

The pipeline builds an `AuditReport` (`privacy_gate.summary`), the gate decides on it,
and every sink (renderings, metrics, MLflow, the Lightning callback, the GitHub summary)
reads it, so a figure has one name and one type, checked by mypy. ``report.json`` is
``AuditReport.to_dict()``; ``AuditReport.from_dict`` reads it back strictly, with an
error that names the malformed field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from privacy_gate.report_model.codec import OMIT_NONE, decode, encode
from privacy_gate.report_model.decision import Decision, Status, Violation
from privacy_gate.report_model.figures import (
    Distribution,
    Histogram,
    Power,
    Summary,
    Survival,
    Tail,
    TopPatient,
)
from privacy_gate.report_model.sections import (
    Adaptive,
    AdaptiveStop,
    Aggregate,
    AttackFigures,
    AuditInfo,
    DPRecommendation,
    DPTraining,
    Look,
    LookOutcome,
    Plan,
    RecommendationStatus,
    Roc,
    TrainingInfo,
)
from privacy_gate.subgroups import ColumnResult

__all__ = [
    "UNDECIDED",
    "Adaptive",
    "AdaptiveStop",
    "Aggregate",
    "AttackFigures",
    "AuditInfo",
    "AuditReport",
    "DPRecommendation",
    "DPTraining",
    "Decision",
    "Distribution",
    "Histogram",
    "Look",
    "LookOutcome",
    "Plan",
    "Power",
    "RecommendationStatus",
    "Roc",
    "Status",
    "Summary",
    "Survival",
    "Tail",
    "TopPatient",
    "TrainingInfo",
    "Violation",
]

UNDECIDED = Decision(Status.ERROR, warnings=("the gate has not evaluated this report",))
"""The decision of a report the gate has not seen yet; such a report is never written."""


@dataclass(frozen=True)
class AuditReport:
    """A whole audit report.

    ``dp_training`` exists when the audited recipe trains with DP-SGD, ``dp_recommendation``
    when the audit trained the reference models itself, ``adaptive`` when it chose K
    itself (``reference_models: auto``); ``extra`` keeps top-level keys
    added after the audit (a ``signature``), so reading and writing keeps them.
    """

    schema_version: str
    audit: AuditInfo
    summary: Summary
    aggregate: Aggregate | None
    subgroups: Mapping[str, ColumnResult]
    decision: Decision
    dp_training: DPTraining | None = field(default=None, metadata=OMIT_NONE)
    dp_recommendation: DPRecommendation | None = field(default=None, metadata=OMIT_NONE)
    adaptive: Adaptive | None = field(default=None, metadata=OMIT_NONE)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (``report.json``)."""
        if self.decision is UNDECIDED:
            raise ValueError("An audit report is written only after the gate decided on it.")
        out: dict[str, Any] = encode(self)
        return out

    @classmethod
    def from_dict(cls, report: Mapping[str, Any]) -> AuditReport:
        """Read a JSON report; `ReportError` names the first missing or malformed field.

        Schema checks (`privacy_gate.report.load_report`) come first: this reads the
        current schema only.
        """
        typed: AuditReport = decode(cls, report, "")
        return typed

    def with_decision(self, decision: Decision) -> AuditReport:
        return replace(self, decision=decision)

    @property
    def passed(self) -> bool:
        return self.decision.passed

    @property
    def n_patients(self) -> int:
        return self.audit.patients
