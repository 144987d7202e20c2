"""The gate's decision as the report holds it: status, violated rules, caveats.

The gate (`privacy_gate.gate`) makes it; every sink reads it from the typed report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from privacy_gate.errors import ReportError
from privacy_gate.report_model.codec import TRANSIENT, decode, encode

__all__ = ["Decision", "Status", "Violation"]


class Status(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 2 error."""
        return {Status.PASS: 0, Status.FAIL: 1, Status.ERROR: 2}[self]


@dataclass(frozen=True)
class Violation:
    """One violated rule (its key in the registry, `privacy_gate.rules`) with the measured
    value and the policy's limit."""

    rule: str
    value: Any
    limit: Any
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or not self.rule.isidentifier():
            raise ReportError(
                f"The 'rule' of a violation must be a rule key (an identifier such as "
                f"'max_patient_auc'). Got {self.rule!r} instead. HINT: the report was not "
                "written by privacy-gate; run a new audit."
            )

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
        rules = ", ".join(dict.fromkeys(v.rule for v in self.violations))
        return f"privacy-gate: {self.status.value.upper()} ({rules})"
