"""Subgroup over-representation in the exposed tail, counted in PATIENTS.

The tail is a set of patients: the top ``ceil((1 - tail_quantile) * n_patients)`` by
patient AUC, with every patient tied at the boundary included, so a tie (e.g. many
records clipped at AUC 1 - 1e-10) never empties it. A patient counts once: the records
of one patient share a mask and have correlated scores, so counting records would treat
them as independent evidence.

Each patient has one value per column: the value its records agree on. A patient whose
records carry several values is reported and excluded; one with only missing values is
missing. For each column the observed tail count of each group is compared with the
count expected from the group's share of the pool's patients (over the tested groups,
renormalised): relative change, Pearson residual, a two-sided binomial test per group
(also Bonferroni-adjusted over every tested group of every column), and the column's
chi-square goodness-of-fit with Bonferroni correction across columns. Missing values and
groups smaller than ``min_group_size`` patients are not tested, and the figures of small
groups are suppressed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from privacy_gate.records import MISSING

__all__ = [
    "SEVERAL",
    "ColumnResult",
    "GroupResult",
    "GroupStatus",
    "SubgroupResult",
    "analyse_subgroups",
    "patient_values",
    "tail_patients",
]

SEVERAL = "<several values>"
"""The group label of patients whose records carry different values (never tested)."""

FloatArray = NDArray[np.float64]


class GroupStatus(str, Enum):
    TESTED = "tested"
    TOO_SMALL = "too_small"
    MISSING = "missing"
    SEVERAL_VALUES = "several_values"


@dataclass(frozen=True)
class GroupResult:
    """One value of a subgroup column. Figures are None for groups not tested; ``size``
    (patients) is also kept for missing and several-valued groups."""

    status: GroupStatus
    size: int | None
    observed: int | None
    expected: float | None
    relative_change: float | None
    pearson_residual: float | None
    p_value: float | None
    p_value_adjusted: float | None
    tail_rate: float | None
    max_patient_auc: float | None

    def significant_at(self, alpha: float, n_tests: int) -> bool:
        """Over-represented at family-wise ``alpha``: the stored Bonferroni-adjusted p (the
        gate decides on it) below ``alpha``, else ``p * n_tests`` (all tested groups of all
        columns) below it."""
        if self.p_value_adjusted is not None:
            return self.p_value_adjusted < alpha
        return self.p_value is not None and self.p_value * max(n_tests, 1) < alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "size": self.size,
            "observed": self.observed,
            "expected": self.expected,
            "relative_change": self.relative_change,
            "pearson_residual": self.pearson_residual,
            "p_value": self.p_value,
            "p_value_adjusted": self.p_value_adjusted,
            "tail_rate": self.tail_rate,
            "max_patient_auc": self.max_patient_auc,
        }


@dataclass(frozen=True)
class ColumnResult:
    """One subgroup column: its groups and its chi-square goodness-of-fit test.

    Attributes:
        tested_patients: patients in the tested groups.
        tail_patients: tail patients in the tested groups (the binomial n).
        several_values: patients excluded because their records disagree.
    """

    groups: Mapping[str, GroupResult]
    tested_patients: int
    tail_patients: int
    several_values: int
    chi_square: float | None
    df: int | None
    p_value: float | None
    p_value_bonferroni: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tested_patients": self.tested_patients,
            "tail_patients": self.tail_patients,
            "several_values": self.several_values,
            "chi_square": self.chi_square,
            "df": self.df,
            "p_value": self.p_value,
            "p_value_bonferroni": self.p_value_bonferroni,
            "groups": {value: group.to_dict() for value, group in self.groups.items()},
        }


@dataclass(frozen=True)
class SubgroupResult:
    """The tail definition and every column's result.

    Attributes:
        tail_target: ``ceil((1 - tail_quantile) * n_patients)``.
        tail_patients: patients in the tail (more than the target when tied).
        tail_threshold: the smallest patient AUC in the tail.
        tested_groups: tested groups over all columns (the Bonferroni family).
    """

    tail_quantile: float
    tail_target: int
    tail_patients: int
    tail_threshold: float | None
    tested_groups: int
    columns: Mapping[str, ColumnResult]

    def tail_dict(self) -> dict[str, Any]:
        return {
            "quantile": self.tail_quantile,
            "target": self.tail_target,
            "patients": self.tail_patients,
            "threshold": self.tail_threshold,
        }


def tail_patients(
    patient_auc: FloatArray, tail_quantile: float
) -> tuple[NDArray[np.bool_], float | None, int]:
    """The exposed tail: the top ``ceil((1 - q) * n)`` patients, ties at the boundary in.

    Returns:
        The ``(n_patients,)`` tail mask, its smallest AUC (None without patients) and the
        target size.

    >>> mask, threshold, target = tail_patients(np.array([0.5, 0.9, 0.9, 0.6]), 0.75)
    >>> mask.tolist(), threshold, target
    ([False, True, True, False], 0.9, 1)
    """
    n = len(patient_auc)
    # round() first: (1 - 0.99) * 100 is 1.0000000000000009, whose ceiling would be 2.
    target = min(n, max(1, math.ceil(round((1.0 - tail_quantile) * n, 9)))) if n else 0
    if target == 0:
        return np.zeros(0, dtype=bool), None, 0
    threshold = float(np.partition(patient_auc, n - target)[n - target])
    return patient_auc >= threshold, threshold, target


def patient_values(
    values: Sequence[str], patient_index: NDArray[np.intp], n_patients: int
) -> tuple[str, ...]:
    """One value per patient: the non-missing value its records agree on; `MISSING` when
    all are missing; `SEVERAL` when they carry different values.

    >>> patient_values(["F", "F", "<missing>", "M", "F"], np.array([0, 0, 1, 2, 2]), 3)
    ('F', '<missing>', '<several values>')
    """
    names, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    code = inverse.astype(np.int64).ravel()
    missing_code = int(np.searchsorted(names, MISSING))
    has_missing = missing_code < len(names) and names[missing_code] == MISSING
    known = code != missing_code if has_missing else np.ones(len(code), dtype=bool)
    first = np.full(n_patients, -1, dtype=np.int64)
    lowest = np.full(n_patients, np.iinfo(np.int64).max)
    highest = np.full(n_patients, -1, dtype=np.int64)
    np.minimum.at(lowest, patient_index[known], code[known])
    np.maximum.at(highest, patient_index[known], code[known])
    first[highest >= 0] = lowest[highest >= 0]
    result = np.where(
        highest < 0, MISSING, np.where(lowest == highest, names[np.maximum(first, 0)], SEVERAL)
    )
    return tuple(str(v) for v in result)


def _groups(values: Sequence[str]) -> tuple[NDArray[np.str_], NDArray[np.intp], NDArray[np.intp]]:
    """``np.unique(values, return_inverse=True, return_counts=True)`` as strings."""
    names, inverse, sizes = np.unique(
        np.asarray(values, dtype=str), return_inverse=True, return_counts=True
    )
    return names, inverse.ravel(), sizes


_NOT_TESTED = {MISSING: GroupStatus.MISSING, SEVERAL: GroupStatus.SEVERAL_VALUES}


@dataclass(frozen=True)
class _Column:
    names: NDArray[np.str_]
    sizes: NDArray[np.intp]
    observed: NDArray[np.int64]
    max_auc: FloatArray
    tested: NDArray[np.bool_]


def _count(
    values: Sequence[str], in_tail: NDArray[np.bool_], patient_auc: FloatArray, min_group_size: int
) -> _Column:
    names, inverse, sizes = _groups(values)
    observed = np.bincount(inverse, weights=in_tail, minlength=len(names)).astype(np.int64)
    max_auc = np.full(len(names), 0.5)
    np.maximum.at(max_auc, inverse, patient_auc)
    tested = np.array(
        [
            str(n) not in _NOT_TESTED and s >= min_group_size
            for n, s in zip(names, sizes, strict=True)
        ],
        dtype=bool,
    )
    return _Column(names, sizes, observed, max_auc, tested)


def _column_result(column: _Column, n_tests: int, n_columns_tested: int) -> ColumnResult:
    tested = column.tested
    n_tail = int(column.observed[tested].sum())
    n_tested = int(column.sizes[tested].sum())
    results: dict[str, GroupResult] = {}
    for g, name in enumerate(column.names):
        name = str(name)
        if not tested[g]:
            status = _NOT_TESTED.get(name, GroupStatus.TOO_SMALL)
            size = int(column.sizes[g]) if status is not GroupStatus.TOO_SMALL else None
            results[name] = GroupResult(status, size, *(None,) * 8)
            continue
        share = float(column.sizes[g] / n_tested)
        e = n_tail * share
        o = int(column.observed[g])
        p = float(stats.binomtest(o, n_tail, share).pvalue) if n_tail > 0 else None
        results[name] = GroupResult(
            status=GroupStatus.TESTED,
            size=int(column.sizes[g]),
            observed=o,
            expected=e,
            relative_change=(o - e) / e if e > 0 else None,
            pearson_residual=(o - e) / math.sqrt(e) if e > 0 else None,
            p_value=p,
            p_value_adjusted=None if p is None else min(1.0, p * n_tests),
            tail_rate=o / int(column.sizes[g]),
            max_patient_auc=float(column.max_auc[g]),
        )
    chi: tuple[float, int, float] | None = None
    if n_tail > 0 and int(tested.sum()) >= 2:
        expected = n_tail * column.sizes[tested] / n_tested
        test = stats.chisquare(column.observed[tested], expected)
        chi = (float(test.statistic), int(tested.sum()) - 1, float(test.pvalue))
    several = int(column.sizes[column.names == SEVERAL].sum())
    return ColumnResult(
        groups=results,
        tested_patients=n_tested,
        tail_patients=n_tail,
        several_values=several,
        chi_square=None if chi is None else chi[0],
        df=None if chi is None else chi[1],
        p_value=None if chi is None else chi[2],
        p_value_bonferroni=None if chi is None else min(1.0, chi[2] * n_columns_tested),
    )


def analyse_subgroups(
    patient_auc: FloatArray,
    columns: Mapping[str, Sequence[str]],
    *,
    tail_quantile: float,
    min_group_size: int,
) -> SubgroupResult:
    """Tail over-representation, by patient, for every subgroup column.

    Args:
        patient_auc: ``(n_patients,)`` patient AUCs.
        columns: one value per PATIENT for each column (see `patient_values`), missing
            values mapped to `MISSING` and disagreeing records to `SEVERAL`.
        min_group_size: the fewest patients a group needs to be tested and published.
    """
    in_tail, threshold, target = tail_patients(patient_auc, tail_quantile)
    counted = {
        name: _count(values, in_tail, patient_auc, min_group_size)
        for name, values in columns.items()
    }
    n_tests = sum(int(c.tested.sum()) for c in counted.values())
    n_columns_tested = sum(
        int(c.tested.sum()) >= 2 and int(c.observed[c.tested].sum()) > 0 for c in counted.values()
    )
    return SubgroupResult(
        tail_quantile=tail_quantile,
        tail_target=target,
        tail_patients=int(in_tail.sum()),
        tail_threshold=threshold,
        tested_groups=n_tests,
        columns={
            name: _column_result(column, n_tests, n_columns_tested)
            for name, column in counted.items()
        },
    )
