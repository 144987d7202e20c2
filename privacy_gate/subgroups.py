"""Subgroup over-representation in the exposed tail, counted in PATIENTS.

The tail is a set of patients: the top ``ceil((1 - tail_quantile) * n_patients)`` by
patient AUC, with every patient tied at the boundary included, so a tie (e.g. many
records clipped at AUC 1 - 1e-10) never empties it. A patient counts once: the records
of one patient share a mask and have correlated scores.

Each column gives every patient one LABEL, the value it is counted under in the tail:

- a patient-level column (``subgroups:``, e.g. sex): the value its records agree on;
  `SEVERAL` when they disagree (a data problem: not tested), `MISSING` when all missing;
- a record-level column (``record_columns:``, e.g. scanner): the value of the record
  that carries the patient's maximum AUC, so no patient is dropped for having records
  with several values.

EXPECTED tail counts come from the null, not from pool shares: a patient's AUC is a
maximum over its records, so with no leakage a patient with more records reaches the
tail more often. ``null_share`` gives each patient's chance to be in the null tail
(`privacy_gate.null_tail`); a group's expected share of the tail is its patients'
summed chance (for a record-level column, each patient's chance split over its records'
values, since under the null any record is equally likely to carry the maximum).

Every non-missing group is TESTED, also those below ``min_group_size``: rare groups are
what the study found exposed. Published groups get a two-sided binomial test, relative
change and Pearson residual; a hidden group gets a one-sided exact binomial test of
over-representation, and only the bound ``p < 10^-k`` (or ``< alpha``) is kept. All tests
share one Bonferroni family (every tested group of every column).

Disclosure: the figures of a group below ``min_group_size`` are hidden, and must not be
recoverable by subtraction. So when a column hides a group, its missing, several-valued
and hidden patients form ONE pooled cell (``other_patients``, ``other_tail_patients``)
of at least ``min_group_size`` patients (published groups are hidden too, smallest
first, until it is), column totals count the published groups only, and the published
groups' tests and chi-square are conditional on the published groups' tail count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from privacy_gate.records import MISSING
from privacy_gate.subgroup_labels import (
    SEVERAL,
    SubgroupColumn,
    patient_level,
    patient_values,
    record_level,
)

__all__ = [
    "HIDDEN",
    "SEVERAL",
    "ColumnResult",
    "GroupResult",
    "GroupStatus",
    "SubgroupColumn",
    "SubgroupResult",
    "analyse_subgroups",
    "p_bound",
    "patient_level",
    "patient_values",
    "record_level",
    "tail_patients",
]

FloatArray = NDArray[np.float64]
_OMIT = {"omit_none": True}
_BOUNDS = tuple(10.0**-k for k in range(1, 13))


class GroupStatus(str, Enum):
    TESTED = "tested"
    TOO_SMALL = "too_small"
    SUPPRESSED = "suppressed"
    MISSING = "missing"
    SEVERAL_VALUES = "several_values"


HIDDEN = (GroupStatus.TOO_SMALL, GroupStatus.SUPPRESSED)
"""Tested groups whose figures are withheld (only ``p_value_bound`` is kept)."""


@dataclass(frozen=True)
class GroupResult:
    """One value of a subgroup column. Figures are None where not published; ``size``
    (patients counted under the value) is also kept for published missing and
    several-valued groups. ``p_value_bound``: for a hidden group, a bound ``p < bound``
    of its Bonferroni-adjusted one-sided p-value (None: not below 0.1)."""

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
    p_value_bound: float | None = field(default=None, metadata=_OMIT)

    def significant_at(self, alpha: float, n_tests: int) -> bool:
        """Significant at family-wise ``alpha``: the stored Bonferroni-adjusted p (the
        gate decides on it) below ``alpha``, else ``p * n_tests`` below it; a hidden
        group when its bound is at most ``alpha``."""
        if self.status in HIDDEN:
            return self.p_value_bound is not None and self.p_value_bound <= alpha
        if self.p_value_adjusted is not None:
            return self.p_value_adjusted < alpha
        return self.p_value is not None and self.p_value * max(n_tests, 1) < alpha

    def to_dict(self) -> dict[str, Any]:
        out = {
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
        if self.p_value_bound is not None:
            out["p_value_bound"] = self.p_value_bound
        return out


@dataclass(frozen=True)
class ColumnResult:
    """One subgroup column: its groups and its chi-square goodness-of-fit test.

    Attributes:
        tested_patients: patients of the PUBLISHED tested groups.
        tail_patients: their tail patients (the n of the published groups' tests).
        several_values: patients whose records disagree (None when pooled).
        level: ``patient`` or ``record`` (the label is the maximum-AUC record's value).
        other_patients, other_tail_patients: the pooled cell of missing, several-valued
            and hidden patients, when the column hides a group (None otherwise).
    """

    groups: Mapping[str, GroupResult]
    tested_patients: int
    tail_patients: int
    several_values: int | None
    chi_square: float | None
    df: int | None
    p_value: float | None
    p_value_bonferroni: float | None
    level: str = "patient"
    other_patients: int | None = field(default=None, metadata=_OMIT)
    other_tail_patients: int | None = field(default=None, metadata=_OMIT)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tested_patients": self.tested_patients,
            "tail_patients": self.tail_patients,
            "several_values": self.several_values,
            "chi_square": self.chi_square,
            "df": self.df,
            "p_value": self.p_value,
            "p_value_bonferroni": self.p_value_bonferroni,
            "level": self.level,
            "groups": {value: group.to_dict() for value, group in self.groups.items()},
        }
        if self.other_patients is not None:
            out["other_patients"] = self.other_patients
            out["other_tail_patients"] = self.other_tail_patients
        return out


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


def p_bound(p: float, alpha: float) -> float | None:
    """The smallest of ``alpha`` and the powers of ten 0.1 ... 1e-12 that is above ``p``
    (None when none is): what a hidden group publishes of its p-value.

    >>> p_bound(0.0004, 0.05), p_bound(0.03, 0.05), p_bound(0.2, 0.05)
    (0.001, 0.05, None)
    """
    above = [b for b in (*_BOUNDS, alpha) if p < b]
    return min(above) if above else None


_UNTESTED = {MISSING: GroupStatus.MISSING, SEVERAL: GroupStatus.SEVERAL_VALUES}


def _column_result(
    column: SubgroupColumn,
    in_tail: NDArray[np.bool_],
    patient_auc: FloatArray,
    null_share: FloatArray,
    min_group_size: int,
    n_tests: int,
    alpha: float,
) -> tuple[ColumnResult, bool]:
    unique, inverse, sizes = np.unique(
        np.asarray(column.labels, dtype=str), return_inverse=True, return_counts=True
    )
    inverse = inverse.ravel()
    names = [str(n) for n in unique]
    observed = np.bincount(inverse, weights=in_tail, minlength=len(names)).astype(np.int64)
    max_auc = np.full(len(names), 0.5)
    np.maximum.at(max_auc, inverse, patient_auc)
    weight = _null_weights(column, names, inverse, null_share)
    tested = np.array([n not in _UNTESTED for n in names], dtype=bool)
    hidden = tested & (sizes < min_group_size)
    other = ~tested | hidden
    if hidden.any():  # complementary suppression: the pooled cell reaches min_group_size
        for g in np.argsort(sizes, kind="stable"):
            if int(sizes[other].sum()) >= min_group_size:
                break
            if tested[g] and not hidden[g]:
                hidden[g] = other[g] = True
    published = tested & ~hidden
    results: dict[str, GroupResult] = {}
    n_all = int(observed[tested].sum())
    w_all = float(weight[tested].sum())
    for g in np.flatnonzero(hidden):  # one-sided exact test on all tested groups
        share = float(weight[g] / w_all) if w_all > 0 else 0.0
        status = GroupStatus.TOO_SMALL if sizes[g] < min_group_size else GroupStatus.SUPPRESSED
        bound = None  # no tested patient in the tail, or no null chance: no evidence
        if n_all > 0 and share > 0:
            p = float(stats.binomtest(int(observed[g]), n_all, share, "greater").pvalue)
            bound = p_bound(min(1.0, p * n_tests), alpha)
        results[names[g]] = GroupResult(status, *(None,) * 9, p_value_bound=bound)
    n_pub = int(observed[published].sum())
    w_pub = float(weight[published].sum())
    for g in np.flatnonzero(published):  # conditional on the published tail count
        share = float(weight[g] / w_pub) if w_pub > 0 else 0.0
        e, o = n_pub * share, int(observed[g])
        p_two = float(stats.binomtest(o, n_pub, share).pvalue) if n_pub > 0 else None
        results[names[g]] = GroupResult(
            status=GroupStatus.TESTED,
            size=int(sizes[g]),
            observed=o,
            expected=e,
            relative_change=(o - e) / e if e > 0 else None,
            pearson_residual=(o - e) / math.sqrt(e) if e > 0 else None,
            p_value=p_two,
            p_value_adjusted=None if p_two is None else min(1.0, p_two * n_tests),
            tail_rate=o / int(sizes[g]),
            max_patient_auc=float(max_auc[g]),
        )
    pooled = bool(hidden.any())
    for g in np.flatnonzero(~tested):
        size = None if pooled else int(sizes[g])
        results[names[g]] = GroupResult(_UNTESTED[names[g]], size, *(None,) * 8)
    chi: tuple[float, int, float] | None = None
    if n_pub > 0 and int(published.sum()) >= 2 and w_pub > 0:
        expected = n_pub * weight[published] / w_pub
        test = stats.chisquare(observed[published], expected)
        chi = (float(test.statistic), int(published.sum()) - 1, float(test.pvalue))
    several = int(sizes[[n == SEVERAL for n in names]].sum()) if names else 0
    result = ColumnResult(
        groups={n: results[n] for n in names},
        tested_patients=int(sizes[published].sum()),
        tail_patients=n_pub,
        several_values=None if pooled else several,
        chi_square=None if chi is None else chi[0],
        df=None if chi is None else chi[1],
        p_value=None if chi is None else chi[2],
        p_value_bonferroni=None,  # set by analyse_subgroups (it knows the columns tested)
        level=column.level,
        other_patients=int(sizes[other].sum()) if pooled else None,
        other_tail_patients=int(observed[other].sum()) if pooled else None,
    )
    return result, chi is not None


def _null_weights(
    column: SubgroupColumn, names: list[str], inverse: NDArray[np.intp], null_share: FloatArray
) -> FloatArray:
    """Each label's summed chance to be in the null tail (module docstring)."""
    if column.record_values is None:
        return np.bincount(inverse, weights=null_share, minlength=len(names)).astype(np.float64)
    assert column.record_patient is not None and column.record_share is not None
    code = {n: i for i, n in enumerate(names)}
    record_code = np.array([code.get(v, -1) for v in column.record_values], dtype=np.int64)
    chance = null_share[column.record_patient] * column.record_share
    known = record_code >= 0  # a value only non-maximum records carry has no label group
    weights = np.bincount(record_code[known], weights=chance[known], minlength=len(names))
    return weights.astype(np.float64)


def analyse_subgroups(
    patient_auc: FloatArray,
    columns: Mapping[str, SubgroupColumn | Sequence[str]],
    *,
    tail_quantile: float,
    min_group_size: int,
    null_share: FloatArray | None = None,
    alpha: float = 0.05,
) -> SubgroupResult:
    """Tail over-representation, by patient, for every subgroup column.

    Args:
        patient_auc: ``(n_patients,)`` patient AUCs.
        columns: each column (`patient_level`, `record_level`), or its labels, one per
            patient (a patient-level column whose labels are already made).
        min_group_size: the fewest patients a group needs for its figures to be published.
        null_share: ``(n_patients,)`` each patient's chance to be in the null tail
            (`privacy_gate.null_tail`); None: equal chances (pool shares).
        alpha: the gate's ``subgroup_alpha``, one of the bounds a hidden group publishes.
    """
    made = {
        name: c if isinstance(c, SubgroupColumn) else SubgroupColumn(tuple(c))
        for name, c in columns.items()
    }
    in_tail, threshold, target = tail_patients(patient_auc, tail_quantile)
    share = np.ones(len(patient_auc)) if null_share is None else np.asarray(null_share)
    n_tests = sum(len({v for v in c.labels if v not in _UNTESTED}) for c in made.values())
    results = {
        name: _column_result(c, in_tail, patient_auc, share, min_group_size, n_tests, alpha)
        for name, c in made.items()
    }
    n_chi = sum(int(has_chi) for _, has_chi in results.values())
    return SubgroupResult(
        tail_quantile=tail_quantile,
        tail_target=target,
        tail_patients=int(in_tail.sum()),
        tail_threshold=threshold,
        tested_groups=n_tests,
        columns={name: _with_bonferroni(result, n_chi) for name, (result, _) in results.items()},
    )


def _with_bonferroni(result: ColumnResult, n_columns: int) -> ColumnResult:
    from dataclasses import replace

    if result.p_value is None:
        return result
    return replace(result, p_value_bonferroni=min(1.0, result.p_value * max(n_columns, 1)))
