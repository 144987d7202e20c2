"""The label each patient is counted under for a subgroup column (`privacy_gate.subgroups`).

A patient-level attribute (sex) takes the value a patient's records agree on; a
record-level attribute (scanner, view, protocol) the value of the record carrying the
patient's maximum AUC, with the patient's null tail chance split over its records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from privacy_gate.records import MISSING

__all__ = ["SEVERAL", "SubgroupColumn", "patient_level", "patient_values", "record_level"]

SEVERAL = "<several values>"
"""The label of patients whose records carry different values of a patient-level column."""

FloatArray = NDArray[np.float64]


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


@dataclass(frozen=True)
class SubgroupColumn:
    """A column as analysed: each patient's label, and how the null tail chance of each
    patient splits over values (``weights``: per record, the share of its patient's
    chance it carries; None for a patient-level column, where it all goes to the label).
    """

    labels: tuple[str, ...]
    level: str = "patient"
    record_values: tuple[str, ...] | None = None
    record_patient: NDArray[np.intp] | None = None
    record_share: FloatArray | None = None


def patient_level(
    values: Sequence[str], patient_index: NDArray[np.intp], n_patients: int
) -> SubgroupColumn:
    """A patient-level column (`patient_values` labels)."""
    return SubgroupColumn(patient_values(values, patient_index, n_patients))


def record_level(
    values: Sequence[str],
    patient_index: NDArray[np.intp],
    n_patients: int,
    record_auc: FloatArray,
) -> SubgroupColumn:
    """A record-level column: each patient is labelled with the value of its record of
    highest AUC (the first such record on ties), and its null chance is split equally
    over its records.

    >>> c = record_level(["a", "b", "c"], np.array([0, 0, 1]), 2, np.array([0.6, 0.9, 0.5]))
    >>> c.labels, c.record_share.tolist()
    (('b', 'c'), [0.5, 0.5, 1.0])
    """
    order = np.lexsort((np.arange(len(record_auc)), -record_auc, patient_index))
    first = np.r_[True, np.diff(patient_index[order]) != 0]
    best = np.full(n_patients, -1, dtype=np.int64)
    best[patient_index[order][first]] = order[first]
    text = [str(v) for v in values]
    labels = tuple(text[i] if i >= 0 else MISSING for i in best)
    counts = np.bincount(patient_index, minlength=n_patients).astype(np.float64)
    share = 1.0 / counts[patient_index]
    return SubgroupColumn(labels, "record", tuple(text), patient_index, share)
