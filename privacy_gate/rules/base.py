"""What a gate rule is: one object with its policy key, its parsing, its check on a
report, whether an adaptive audit can settle a fail on it, and what it asks of the audit's
power. The registry (`privacy_gate.rules`) lists them; the config, the gate, the adaptive
audit and the DP recommendation read that list and name no rule themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from privacy_gate.errors import bounded_number
from privacy_gate.report_model import AuditReport, Violation

__all__ = ["AucLimitRule", "GateRule", "ParseContext", "Policy", "as_number"]


@dataclass(frozen=True)
class ParseContext:
    """The risk settings a rule's limit is validated against (parsed before the gate)."""

    at_risk_auc: float
    fpr: tuple[float, ...]


@dataclass(frozen=True)
class Policy:
    """What a rule reads when it checks a report: every rule's limit (absent: not
    checked) and the gate's and risk section's shared settings."""

    limits: Mapping[str, Any]
    at_risk_auc: float
    min_group_size: int
    fdr: float
    detection_power: float
    subgroup_alpha: float

    def limit(self, key: str) -> Any:
        """The parsed limit of rule ``key``, None when the policy does not check it."""
        return self.limits.get(key)


def as_number(value: float | None) -> float:
    """A figure the report could not state (None: not finite) as NaN, which fails a rule."""
    return math.nan if value is None else float(value)


class GateRule:
    """One release rule. Subclasses set ``key`` and override `parse` and `check`; the
    defaults describe a rule that cannot settle an adaptive fail and asks nothing of the
    audit's power.

    Attributes:
        key: the rule's name, in the policy's ``gate`` section and in violations.
        in_policy: False for a rule that the policy does not set directly but derives
            (the noise floor follows from the patient-level limits).
        listed_when_unset: whether the policy digest lists the key as null when the
            policy leaves it out. True for the rules of the first policy schema only, so
            their digests hold; a rule added later is listed only when set, and adding
            it changes no existing policy's digest.
        settles: whether an adaptive audit may settle a fail on this rule early
            (`settled`); a rule that more reference models can change must not.
        cannot_settle_because: why not, for the docs and the contract test.
        example: a valid policy value, for the docs and the contract test.
    """

    key: str = ""
    example: ClassVar[Any] = None
    in_policy: bool = True
    listed_when_unset: bool = False
    settles: bool = False
    cannot_settle_because: str = ""

    def parse(self, value: Any, context: ParseContext) -> Any:
        """The validated limit from the policy's YAML value (not None); raises
        `privacy_gate.errors.ConfigError` naming the key, the value and the fix."""
        raise NotImplementedError

    def to_json(self, limit: Any) -> Any:
        """The limit as the policy's canonical JSON (the digest's input)."""
        return limit

    def active(self, policy: Policy) -> bool:
        """Whether the policy checks this rule."""
        return policy.limit(self.key) is not None

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        """The rule's violations on the report's figures; evidence the rule needs but the
        report lacks is a violation, never a pass."""
        raise NotImplementedError

    def settled(self, report: AuditReport, policy: Policy, looks: int, alpha: float) -> bool:
        """Whether a violated rule's fail is settled at this look: its evidence holds at
        the error levels spent over ``looks`` planned looks (FDR ``fdr / looks``, other
        tests ``alpha / looks``)."""
        return False

    def patient_auc_limit(self, policy: Policy) -> tuple[float, str] | None:
        """The patient-level AUC this rule bounds and the key it comes from (the noise
        floor must lie below it; DP-SGD is tuned to it), or None."""
        return None

    def reference_models_needed(
        self, policy: Policy, n_records: int, n_patients: int
    ) -> int | None:
        """The least K an audit of this pool needs for this rule (0: no demand; None: no K
        up to the search's end suffices)."""
        return 0


class AucLimitRule(GateRule):
    """A rule whose limit is an AUC in [0.5, 1] (the worst patient's, an attack's)."""

    def parse(self, value: Any, context: ParseContext) -> float:
        return bounded_number("gate", self.key, value, lo=0.5, hi=1.0)
