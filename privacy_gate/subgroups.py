"""Subgroup over-representation in the exposed tail.

The tail is the set of records whose AUC is strictly above the ``tail_quantile``
quantile of record AUCs (order-invariant; ties are never split). For each column the
observed tail count of each group is compared with the count expected from the group's
share of the pool (over the tested groups, renormalised): relative change, Pearson
residual, a two-sided binomial test per group, and the column's chi-square
goodness-of-fit with Bonferroni correction across columns. Missing values form their
own group, and groups smaller than ``min_group_size`` are suppressed; neither is tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from privacy_gate.records import MISSING

__all__ = [
    "ColumnResult",
    "GroupResult",
    "GroupStatus",
    "SubgroupResult",
    "analyse_subgroups",
    "tail_mask",
]

FloatArray = NDArray[np.float64]


class GroupStatus(str, Enum):
    TESTED = "tested"
    TOO_SMALL = "too_small"
    MISSING = "missing"


@dataclass(frozen=True)
class GroupResult:
    """One value of a subgroup column. Figures are None for groups not tested."""

    status: GroupStatus
    size: int | None
    observed: int | None
    expected: float | None
    relative_change: float | None
    pearson_residual: float | None
    p_value: float | None
    tail_rate: float | None
    max_patient_auc: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "size": self.size,
            "observed": self.observed,
            "expected": self.expected,
            "relative_change": self.relative_change,
            "pearson_residual": self.pearson_residual,
            "p_value": self.p_value,
            "tail_rate": self.tail_rate,
            "max_patient_auc": self.max_patient_auc,
        }


@dataclass(frozen=True)
class ColumnResult:
    """One subgroup column: its groups and its chi-square goodness-of-fit test."""

    groups: Mapping[str, GroupResult]
    chi_square: float | None
    df: int | None
    p_value: float | None
    p_value_bonferroni: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "chi_square": self.chi_square,
            "df": self.df,
            "p_value": self.p_value,
            "p_value_bonferroni": self.p_value_bonferroni,
            "groups": {value: group.to_dict() for value, group in self.groups.items()},
        }


@dataclass(frozen=True)
class SubgroupResult:
    """The tail definition and every column's result."""

    tail_quantile: float
    tail_threshold: float
    tail_records: int
    columns: Mapping[str, ColumnResult]


def tail_mask(record_auc: FloatArray, tail_quantile: float) -> tuple[NDArray[np.bool_], float]:
    """Records strictly above the ``tail_quantile`` quantile of record AUC.

    >>> mask, threshold = tail_mask(np.array([0.5, 0.5, 0.6, 0.9]), 0.5)
    >>> mask.tolist(), threshold
    ([False, False, True, True], 0.55)
    """
    threshold = float(np.quantile(record_auc, tail_quantile))
    return record_auc > threshold, threshold


def _groups(
    values: Sequence[str],
) -> tuple[NDArray[np.str_], NDArray[np.intp], NDArray[np.intp]]:
    """``np.unique(np.asarray(values, dtype=str), return_inverse=True, return_counts=True)``.

    A column has few distinct values, so they are hashed and only those sorted (NumPy
    and Python order strings alike, by code point), instead of sorting every record's
    string. Values NumPy would alter (not strings, or with NULs) take NumPy's path; a
    value equal to a string hashes with it, so only the distinct values are checked.
    """
    try:
        distinct = dict.fromkeys(values)
    except TypeError:  # unhashable values
        distinct = {}
    plain = bool(distinct) and set(map(type, distinct)) <= {str, np.str_}
    if not plain or "\0" in "".join(distinct):
        names, inverse, sizes = np.unique(
            np.asarray(values, dtype=str), return_inverse=True, return_counts=True
        )
        return names, inverse, sizes
    ordered = sorted(distinct)
    code = {value: i for i, value in enumerate(ordered)}
    inverse = np.fromiter(map(code.__getitem__, values), dtype=np.intp, count=len(values))
    return np.array(ordered, dtype=str), inverse, np.bincount(inverse, minlength=len(ordered))


def _column(
    values: Sequence[str],
    in_tail: NDArray[np.bool_],
    patient_auc: FloatArray,
    min_group_size: int,
) -> tuple[dict[str, GroupResult], tuple[float, int, float] | None]:
    """Per-group results of one column and its (chi-square, df, p) when testable."""
    names, inverse, sizes = _groups(values)
    observed = np.bincount(inverse, weights=in_tail, minlength=len(names)).astype(np.int64)
    max_auc = np.full(len(names), 0.5)
    np.maximum.at(max_auc, inverse, patient_auc)
    tested = np.array(
        [n != MISSING and s >= min_group_size for n, s in zip(names, sizes, strict=True)]
    )
    n_tail = int(observed[tested].sum())
    shares = sizes[tested] / sizes[tested].sum() if tested.any() else np.array([])
    expected = np.zeros(len(names))
    expected[tested] = n_tail * shares
    results: dict[str, GroupResult] = {}
    for g, name in enumerate(names):
        if not tested[g]:
            status = GroupStatus.MISSING if name == MISSING else GroupStatus.TOO_SMALL
            results[str(name)] = GroupResult(status, None, None, None, None, None, None, None, None)
            continue
        e = float(expected[g])
        p_group = float(sizes[g] / sizes[tested].sum())
        results[str(name)] = GroupResult(
            status=GroupStatus.TESTED,
            size=int(sizes[g]),
            observed=int(observed[g]),
            expected=e,
            relative_change=(observed[g] - e) / e if e > 0 else None,
            pearson_residual=(observed[g] - e) / np.sqrt(e) if e > 0 else None,
            p_value=float(stats.binomtest(int(observed[g]), n_tail, p_group).pvalue)
            if n_tail > 0
            else None,
            tail_rate=float(observed[g] / sizes[g]),
            max_patient_auc=float(max_auc[g]),
        )
    if n_tail == 0 or int(tested.sum()) < 2:
        return results, None
    chi = stats.chisquare(observed[tested], expected[tested])
    return results, (float(chi.statistic), int(tested.sum()) - 1, float(chi.pvalue))


def analyse_subgroups(
    record_auc: FloatArray,
    patient_auc_of_record: FloatArray,
    columns: Mapping[str, Sequence[str]],
    *,
    tail_quantile: float,
    min_group_size: int,
) -> SubgroupResult:
    """Tail over-representation for every subgroup column.

    Args:
        record_auc: ``(n_records,)``.
        patient_auc_of_record: ``(n_records,)`` the AUC of each record's patient.
        columns: subgroup values per column, each ``(n_records,)``, missing values
            already mapped to `MISSING`.
    """
    in_tail, threshold = tail_mask(record_auc, tail_quantile)
    per_column = {
        name: _column(values, in_tail, patient_auc_of_record, min_group_size)
        for name, values in columns.items()
    }
    n_tests = sum(test is not None for _, test in per_column.values())
    results = {}
    for name, (groups, test) in per_column.items():
        results[name] = ColumnResult(
            groups=groups,
            chi_square=None if test is None else test[0],
            df=None if test is None else test[1],
            p_value=None if test is None else test[2],
            p_value_bonferroni=None if test is None else min(1.0, test[2] * n_tests),
        )
    return SubgroupResult(tail_quantile, threshold, int(in_tail.sum()), results)
