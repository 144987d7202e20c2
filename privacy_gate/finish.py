"""The finishing stage: an audit's figures and what its caller adds in, the decided report out.

A report says more than the numerical stages compute: where its signals came from
(provenance: the plan, the training, the model's digest), the adaptive audit's looks, the
DP guarantee of the audited recipe and, when the gate refuses the model, the DP-SGD
remedy. `finish` puts all of it into the report, lets the gate decide once on that
finished report, and then derives the remedy from the decision (the gate never reads the
remedy: it answers "what now?" to the verdict). Nothing edits a report after `finish`
returns it; re-evaluating a stored report under another policy is `pipeline.recheck`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from privacy_gate.config import AuditConfig
from privacy_gate.gate import Decision, decided
from privacy_gate.patients import PatientStats
from privacy_gate.record_stats import RecordStats
from privacy_gate.report_model import (
    UNDECIDED,
    Adaptive,
    AuditReport,
    DPRecommendation,
    DPTraining,
)

__all__ = ["AuditResult", "Sections", "SectionsOf", "finish"]


@dataclass(frozen=True)
class AuditResult:
    """An audit: the typed report and the per-record/per-patient figures.

    `pipeline.assess` gives one whose report the gate has not decided yet (its decision
    is ``UNDECIDED``, and it cannot be written); `finish` gives the finished one.
    """

    report: AuditReport
    records: RecordStats
    patients: PatientStats
    record_keys: tuple[str, ...]
    patient_keys: tuple[str, ...]
    patient_index: np.ndarray[Any, np.dtype[np.intp]]

    @property
    def decision(self) -> Decision:
        return self.report.decision


@dataclass(frozen=True)
class Sections:
    """What the caller adds to an audit's figures (all optional).

    Attributes:
        provenance: entries for the report's ``audit`` section (``plan``, ``training``,
            ``model_sha256``, or a caller's own).
        dp_training: the audited recipe's DP guarantee, checked against the figures.
        remedy: the retraining recommendation, computed from the decided audit (a
            passing audit needs none; the recommendation says so).
    """

    provenance: Mapping[str, Any] = field(default_factory=dict)
    dp_training: DPTraining | None = None
    remedy: Callable[[AuditResult], DPRecommendation] | None = None


SectionsOf = Callable[[AuditResult], Sections]
"""Builds the `Sections` from the undecided figures of the audit being finished (the
provenance of an adaptive audit names the K of its last look, known only then)."""


def finish(
    figures: AuditResult,
    config: AuditConfig,
    *,
    sections_of: SectionsOf | None = None,
    adaptive: Adaptive | None = None,
) -> AuditResult:
    """The finished audit: ``figures`` with the caller's sections and the adaptive looks,
    decided once by the gate under ``config``, then the remedy.

    Raises:
        ValueError: ``figures`` were decided already (a report is finished once).
    """
    if figures.report.decision is not UNDECIDED:
        raise ValueError(
            "finish takes the undecided figures of pipeline.assess; this report was "
            "decided already. HINT: re-evaluate a stored report with pipeline.recheck."
        )
    sections = sections_of(figures) if sections_of is not None else Sections()
    report = figures.report
    if sections.provenance:
        report = replace(report, audit=report.audit.with_provenance(sections.provenance))
    report = replace(report, adaptive=adaptive, dp_training=sections.dp_training)
    result = replace(figures, report=decided(report, config))
    if sections.remedy is None:
        return result
    remedy = sections.remedy(result)
    return replace(result, report=replace(result.report, dp_recommendation=remedy))
