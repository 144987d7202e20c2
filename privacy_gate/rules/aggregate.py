"""The aggregate rules: the strongest attack on the release candidate, by AUC and by TPR
at a low FPR. Both need the candidate's signals; without them they fail."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from privacy_gate.auc_bounds import auc_lower_bound
from privacy_gate.errors import ConfigError, bounded_number, invalid_value
from privacy_gate.report_model import AuditReport, Violation
from privacy_gate.rules.base import AucLimitRule, GateRule, ParseContext, Policy, as_number

__all__ = ["MaxAggregateAuc", "MaxAggregateTprAtFpr"]


def _worst_first(value: float | None) -> float:
    """Sort key: a value that is not a finite number ranks above every real one."""
    number = as_number(value)
    return math.inf if math.isnan(number) else number


def _no_candidate(key: str, limit: Any) -> Violation:
    return Violation(
        key,
        None,
        limit,
        f"The policy checks {key}, but the audit has no release-candidate "
        "signals. HINT: add target_scores and target_members, or remove "
        "gate.max_aggregate_* from the policy.",
    )


class MaxAggregateAuc(AucLimitRule):
    """The strongest attack's AUC; settles when its lower bound (at ``alpha`` spent over
    the looks and the attacks) is above the limit."""

    key = "max_aggregate_auc"
    example = 0.6
    listed_when_unset = True
    settles = True

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit = policy.limit(self.key)
        if report.aggregate is None:
            return [_no_candidate(self.key, limit)]
        attacks = report.aggregate.attacks
        # A NaN ranks first, so no attack can hide behind one; and NaN never passes.
        best = max(attacks, key=lambda a: _worst_first(attacks[a].auc))
        auc = as_number(attacks[best].auc)
        if auc <= limit:
            return []
        return [
            Violation(
                self.key,
                auc,
                limit,
                f"The strongest attack ({best}) reaches AUC {auc:.3f} > {limit:.3f} on the "
                "release candidate.",
            )
        ]

    def settled(self, report: AuditReport, policy: Policy, looks: int, alpha: float) -> bool:
        aggregate, limit = report.aggregate, policy.limit(self.key)
        if aggregate is None or not aggregate.attacks:
            return False
        level = alpha / (looks * len(aggregate.attacks))
        return any(
            attack.auc is not None
            and auc_lower_bound(attack.auc, aggregate.members, aggregate.non_members, level) > limit
            for attack in aggregate.attacks.values()
        )


class MaxAggregateTprAtFpr(GateRule):
    """The strongest attack's TPR at each listed FPR (the low-FPR regime of Carlini et
    al.)."""

    key = "max_aggregate_tpr_at_fpr"
    example: ClassVar[dict[float, float]] = {0.001: 0.01}
    listed_when_unset = True
    cannot_settle_because = (
        "a TPR at a low FPR has no confidence bound the audit computes; a fail is decided "
        "at the last look"
    )

    def parse(self, value: Any, context: ParseContext) -> tuple[tuple[float, float], ...]:
        expected = "a mapping from an FPR listed in risk.fpr to the largest allowed TPR"
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(
                invalid_value(
                    self.key, "gate", expected, value, f"e.g. {self.key}: {{0.001: 0.01}}"
                )
            )
        pairs: list[tuple[float, float]] = []
        for key, tpr in value.items():
            try:
                rate = float(key)
            except (TypeError, ValueError):
                raise ConfigError(invalid_value(self.key, "gate", expected, value)) from None
            listed = [f for f in context.fpr if math.isclose(rate, f, rel_tol=1e-9)]
            if not listed:
                raise ConfigError(
                    invalid_value(
                        self.key,
                        "gate",
                        f"keyed by FPRs in risk.fpr {list(context.fpr)}",
                        key,
                        "add the FPR to risk.fpr or use one already listed",
                    )
                )
            limit = bounded_number("gate", f"{self.key}[{key}]", tpr, lo=0.0, hi=1.0)
            pairs.append((listed[0], limit))
        return tuple(sorted(pairs))

    def to_json(self, limit: Any) -> Any:
        return {repr(float(f)): t for f, t in limit}

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        pairs = policy.limit(self.key)
        if report.aggregate is None:
            return [_no_candidate(self.key, self.to_json(pairs))]
        attacks = report.aggregate.attacks
        violations = []
        for fpr, limit in pairs:
            key = repr(float(fpr))
            if any(key not in r.tpr_at_fpr for r in attacks.values()):
                violations.append(
                    Violation(
                        self.key,
                        None,
                        limit,
                        f"The audit has no TPR at FPR {key}. HINT: run a new audit with this "
                        "FPR in risk.fpr.",
                    )
                )
                continue
            values = {a: r.tpr_at_fpr[key] for a, r in attacks.items()}
            best = max(values, key=lambda a: _worst_first(values[a]))
            tpr = as_number(values[best])
            if not tpr <= limit:
                violations.append(
                    Violation(
                        self.key,
                        {key: tpr},
                        {key: limit},
                        f"The strongest attack at FPR {key} ({best}) reaches TPR {tpr:.4f} > "
                        f"{limit}.",
                    )
                )
        return violations
