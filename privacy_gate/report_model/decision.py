"""The gate's decision as the report holds it: status, violated rules, caveats.

The gate (`privacy_gate.gate`) makes it; every sink reads it from the typed report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from privacy_gate.report_model.codec import TRANSIENT, decode, encode

__all__ = ["Decision", "Rule", "Status", "Violation"]


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 2 error."""
        return {Status.PASS: 0, Status.FAIL: 1, Status.ERROR: 2}[self]


class Rule(str, Enum):
    MIN_REFERENCE_MODELS = "min_reference_models"
    NOISE_FLOOR = "noise_floor"
    MAX_PATIENT_AUC = "max_patient_auc"
    MAX_PATIENTS_AT_RISK = "max_patients_at_risk"
    MAX_FRACTION_AT_RISK = "max_fraction_at_risk"
    MAX_AGGREGATE_AUC = "max_aggregate_auc"
    MAX_AGGREGATE_TPR_AT_FPR = "max_aggregate_tpr_at_fpr"
    MAX_SUBGROUP_RELATIVE_CHANGE = "max_subgroup_relative_change"
    MAX_DETECTABLE_AUC = "max_detectable_auc"


@dataclass(frozen=True)
class Violation:
    """One violated rule with the measured value and the policy's limit."""

    rule: Rule
    value: Any
    limit: Any
    message: str

    def to_dict(self) -> dict[str, Any]:
        return encode(self)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Decision:
    """The gate's outcome: status, every violated rule, caveats, and the confident
    at-risk count recomputed at the policy's FDR."""

    status: Status
    violations: tuple[Violation, ...] = ()
    warnings: tuple[str, ...] = ()
    patients_at_risk: int | None = field(default=None, metadata=TRANSIENT)
    #: SHA-256 of the policy this decision was evaluated under (`AuditConfig.sha256`): the
    #: one digest every output of a run shows (not stored: the report holds its own).
    policy_sha256: str | None = field(default=None, metadata=TRANSIENT)

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    def to_dict(self) -> dict[str, Any]:
        return encode(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, value: Any, path: str = "decision") -> Decision:
        """A report's ``decision`` section (strict: a malformed one is a `ReportError`)."""
        return decode(cls, value, path)  # type: ignore[no-any-return]

    def one_line(self) -> str:
        """A one-line verdict for terminals and CI logs."""
        if self.status is Status.PASS:
            return "privacy-gate: PASS"
        rules = ", ".join(dict.fromkeys(v.rule.value for v in self.violations))
        return f"privacy-gate: {self.status.value.upper()} ({rules})"
