"""Reading the JSON report leniently (an error report may lack whole sections), and the
subgroup rows every rendering shows, with significance from the gate's own level."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from privacy_gate.config import GateConfig


# --------------------------------------------------------------------------- reading
def as_mapping(value: object) -> Mapping[str, Any]:
    """Return ``value`` if it is a JSON object, else an empty one (missing sections)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> list[Any]:
    """Return ``value`` as a list if it is a JSON array, else an empty list."""
    return list(value) if isinstance(value, list | tuple) else []


def as_float(value: object) -> float | None:
    """Return a JSON number as float; ``None`` for null, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def as_int(value: object) -> int | None:
    """Return a JSON integer (or integral float) as int; ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_str(value: object, default: str = "") -> str:
    """Return a JSON string, or ``default`` for anything else."""
    return value if isinstance(value, str) else default


@dataclass(frozen=True)
class GroupRow:
    """One subgroup value of one subgroup column, as read from the report."""

    column: str
    value: str
    status: str
    size: int | None
    observed: int | None
    expected: float | None
    relative_change: float | None
    p_value: float | None
    p_value_adjusted: float | None
    tail_rate: float | None
    max_patient_auc: float | None


def subgroup_alpha(report: Mapping[str, Any]) -> float:
    """The gate's family-wise level for subgroup tests, as the audit's policy set it.

    Reports without a policy (error reports) fall back to the policy default, so a
    rendering never calls a group significant at a level the gate did not use.
    """
    gate = as_mapping(as_mapping(as_mapping(report.get("audit")).get("config")).get("gate"))
    alpha = as_float(gate.get("subgroup_alpha"))
    return GateConfig().subgroup_alpha if alpha is None else alpha


def min_group_size(report: Mapping[str, Any]) -> int | None:
    """The policy's minimum group size, below which group figures are suppressed."""
    risk = as_mapping(as_mapping(as_mapping(report.get("audit")).get("config")).get("risk"))
    return as_int(risk.get("min_group_size"))


def subgroup_rows(report: Mapping[str, Any]) -> list[GroupRow]:
    """All groups of all subgroup columns, in report order."""
    rows: list[GroupRow] = []
    for column, entry in as_mapping(report.get("subgroups")).items():
        for value, group in as_mapping(as_mapping(entry).get("groups")).items():
            g = as_mapping(group)
            rows.append(
                GroupRow(
                    column=str(column),
                    value=str(value),
                    status=as_str(g.get("status"), "unknown"),
                    size=as_int(g.get("size")),
                    observed=as_int(g.get("observed")),
                    expected=as_float(g.get("expected")),
                    relative_change=as_float(g.get("relative_change")),
                    p_value=as_float(g.get("p_value")),
                    p_value_adjusted=as_float(g.get("p_value_adjusted")),
                    tail_rate=as_float(g.get("tail_rate")),
                    max_patient_auc=as_float(g.get("max_patient_auc")),
                )
            )
    return rows


def is_suppressed(row: GroupRow, minimum: int | None) -> bool:
    """Whether a group's figures must be hidden: too small to publish, whatever its status.

    Small groups are suppressed because their counts can single out patients.
    """
    if row.status == "too_small":
        return True
    return minimum is not None and row.size is not None and row.size < minimum


def tested_rows(report: Mapping[str, Any]) -> list[GroupRow]:
    """Groups that were tested and may be published."""
    minimum = min_group_size(report)
    return [
        r for r in subgroup_rows(report) if r.status == "tested" and not is_suppressed(r, minimum)
    ]


def is_significant(row: GroupRow, n_tests: int, alpha: float) -> bool:
    """Bonferroni over all tested groups of all columns: ``p * n_tests < alpha``.

    The adjusted p-value the audit stored is used when present (the gate decides on it).
    """
    if row.p_value_adjusted is not None:
        return row.p_value_adjusted < alpha
    return row.p_value is not None and row.p_value * max(n_tests, 1) < alpha
