"""What every rendering reads from the typed report besides its sections' fields: the
policy the audit ran under, and the subgroup rows, with significance from the gate's own
level."""

from __future__ import annotations

from dataclasses import dataclass

from privacy_gate.config import AuditConfig, parse_config
from privacy_gate.report_model import AuditReport
from privacy_gate.subgroups import HIDDEN, GroupResult, GroupStatus

__all__ = [
    "GroupRow",
    "is_significant",
    "is_suppressed",
    "min_group_size",
    "n_subgroup_tests",
    "policy",
    "representation",
    "subgroup_alpha",
    "subgroup_rows",
    "tested_rows",
]


@dataclass(frozen=True)
class GroupRow:
    """One subgroup value of one subgroup column, with its result."""

    column: str
    value: str
    group: GroupResult


def policy(report: AuditReport) -> AuditConfig:
    """The policy the audit ran under, as the report wrote it."""
    return parse_config(report.audit.config, source="report's audit config")


def subgroup_alpha(report: AuditReport) -> float:
    """The gate's family-wise level for subgroup tests, as the audit's policy set it, so a
    rendering never calls a group significant at a level the gate did not use."""
    return policy(report).gate.subgroup_alpha


def min_group_size(report: AuditReport) -> int:
    """The policy's minimum group size, below which group figures are suppressed."""
    return policy(report).risk.min_group_size


def subgroup_rows(report: AuditReport) -> list[GroupRow]:
    """All groups of all subgroup columns, in report order."""
    return [
        GroupRow(column=column, value=value, group=group)
        for column, result in report.subgroups.items()
        for value, group in result.groups.items()
    ]


def is_suppressed(row: GroupRow, minimum: int) -> bool:
    """Whether a group's figures must be hidden: too small to publish, whatever its status.

    Small groups are suppressed because their counts can single out patients.
    """
    if row.group.status in HIDDEN:
        return True
    return row.group.size is not None and row.group.size < minimum


def tested_rows(report: AuditReport) -> list[GroupRow]:
    """Groups that were tested and may be published."""
    minimum = min_group_size(report)
    return [
        r
        for r in subgroup_rows(report)
        if r.group.status is GroupStatus.TESTED and not is_suppressed(r, minimum)
    ]


def is_significant(row: GroupRow, n_tests: int, alpha: float) -> bool:
    """Bonferroni over all tested groups of all columns: ``p * n_tests < alpha``
    (`GroupResult.significant_at`: the adjusted p-value the audit stored when present)."""
    return row.group.significant_at(alpha, n_tests)


def n_subgroup_tests(report: AuditReport) -> int:
    """The Bonferroni family the gate used: every tested group, published or hidden."""
    return sum(
        r.group.status is GroupStatus.TESTED or r.group.status in HIDDEN
        for r in subgroup_rows(report)
    )


def representation(row: GroupRow, n_tests: int, alpha: float) -> str | None:
    """ "over" or "under" for a group significantly over- or under-represented in the tail
    (only over-representation can violate the gate), None when not significant."""
    if not is_significant(row, n_tests, alpha):
        return None
    if row.group.status in HIDDEN:  # hidden groups are tested one-sided, for excess
        return "over"
    change = row.group.relative_change
    return None if change is None or change == 0 else ("over" if change > 0 else "under")
