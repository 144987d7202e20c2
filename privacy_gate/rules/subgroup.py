"""The subgroup rule: no group over-represented in the exposed tail beyond a relative
change, at family-wise ``subgroup_alpha`` (Bonferroni over the tested and hidden groups)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scipy import stats

from privacy_gate.errors import bounded_number
from privacy_gate.report_model import AuditReport, Violation
from privacy_gate.rules.base import GateRule, ParseContext, Policy, as_number
from privacy_gate.subgroups import HIDDEN, ColumnResult, GroupResult, GroupStatus

__all__ = ["MaxSubgroupRelativeChange"]


def _tests(subgroups: Mapping[str, ColumnResult]) -> int:
    return sum(
        g.status is GroupStatus.TESTED or g.status in HIDDEN
        for result in subgroups.values()
        for g in result.groups.values()
    )


def _untestable_reason(
    column: str, result: ColumnResult, limit: float, alpha: float, n_tests: int
) -> str | None:
    """Why a column cannot show a violation at all, or None when it can.

    The rule needs evidence, never its absence: a column must have two tested groups and
    a tail whose most extreme outcome (as many tail patients in one group as the group
    has, at most the whole tail) would be flagged, for every group that the
    relative-change limit allows to be flagged at all.
    """
    tested = {v: g for v, g in result.groups.items() if g.status is GroupStatus.TESTED}
    hidden = [g for g in result.groups.values() if g.status in HIDDEN]
    if len(tested) + len(hidden) < 2:
        return (
            f"column {column!r} has {len(tested) + len(hidden)} tested group(s); a test "
            "needs two. HINT: merge values into fewer groups, or remove the column"
        )
    if hidden:
        return None  # a hidden group can fail the rule on its own exact test
    n_tail = result.tail_patients
    if n_tail == 0:
        return f"the exposed tail holds no patient of a tested group of column {column!r}"
    total_expected = sum(g.expected or 0.0 for g in tested.values())
    for value, group in tested.items():
        size = group.size or 0
        share = (group.expected or 0.0) / total_expected if total_expected > 0 else 0.0
        if share <= 0.0:
            continue  # no expected tail patient: the rule's relative change is undefined
        most = min(n_tail, size)  # a group cannot hold more tail patients than it has
        if most / (n_tail * share) - 1.0 <= limit:
            continue  # even its most extreme outcome stays within the limit
        extreme = float(stats.binomtest(most, n_tail, share).pvalue) * n_tests
        if extreme >= alpha:
            return (
                f"the exposed tail of column {column!r} holds {n_tail} patient(s): even "
                f"{most} of them in group {value!r} would not be significant (Bonferroni p "
                f"{min(extreme, 1.0):.2g} >= {alpha}). HINT: lower "
                "risk.tail_quantile so the tail holds more patients, or merge small groups"
            )
    return None


class MaxSubgroupRelativeChange(GateRule):
    """Over-representation of a subgroup among the exposed tail's patients; settles when
    a group over the limit is significant at ``subgroup_alpha / looks``."""

    key = "max_subgroup_relative_change"
    example = 1.0
    listed_when_unset = True
    settles = True

    def parse(self, value: Any, context: ParseContext) -> float:
        return bounded_number("gate", self.key, value, lo=0.0, hi=1e9)

    def _violation(self, limit: float, message: str, value: float | None = None) -> Violation:
        return Violation(self.key, value, limit, message)

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit, alpha = policy.limit(self.key), policy.subgroup_alpha
        if not report.subgroups:
            return [
                self._violation(
                    limit,
                    "The policy checks max_subgroup_relative_change, but the audit analysed "
                    "no subgroup column, so over-representation cannot be ruled out. HINT: "
                    "name the columns in 'subgroups' (e.g. subgroups: [sex, race]) or remove "
                    "the rule.",
                )
            ]
        n_tests = _tests(report.subgroups)
        violations = []
        for column, result in report.subgroups.items():
            reason = _untestable_reason(column, result, limit, alpha, n_tests)
            if reason is not None:
                violations.append(
                    self._violation(
                        limit, f"Subgroup over-representation cannot be tested: {reason}."
                    )
                )
                continue
            for value, group in result.groups.items():
                if group.status in HIDDEN and group.significant_at(alpha, n_tests):
                    violations.append(self._hidden(column, group, limit, policy.min_group_size))
                if group.status is not GroupStatus.TESTED:
                    continue
                change, p_adjusted = group.relative_change, group.p_value_adjusted
                if change is None or p_adjusted is None:
                    continue
                if not change <= limit and not p_adjusted >= alpha:
                    violations.append(
                        self._violation(
                            limit,
                            f"Subgroup {column}={value!r} is over-represented among the "
                            f"exposed tail's patients by {change:+.0%} (observed "
                            f"{group.observed}, expected {as_number(group.expected):.1f}, "
                            f"Bonferroni p = {p_adjusted:.2g} < {alpha}).",
                            change,
                        )
                    )
        return violations

    def _hidden(self, column: str, group: GroupResult, limit: float, min_size: int) -> Violation:
        """A hidden group over-represented: the column and a bound, never its figures."""
        which = (
            f"a group of fewer than {min_size} patients"
            if group.status is GroupStatus.TOO_SMALL
            else "a group whose figures are withheld to protect a smaller one"
        )
        return self._violation(
            limit,
            f"In subgroup column {column!r}, {which} is over-represented in the exposed tail "
            f"(exact one-sided test, Bonferroni p < {group.p_value_bound:g}); its figures "
            "are suppressed.",
        )

    def settled(self, report: AuditReport, policy: Policy, looks: int, alpha: float) -> bool:
        limit, level = policy.limit(self.key), policy.subgroup_alpha / looks
        return any(
            (
                g.status is GroupStatus.TESTED
                and g.relative_change is not None
                and g.p_value_adjusted is not None
                and g.relative_change > limit
                and g.p_value_adjusted < level
            )
            or (g.status in HIDDEN and g.p_value_bound is not None and g.p_value_bound <= level)
            for column in report.subgroups.values()
            for g in column.groups.values()
        )
