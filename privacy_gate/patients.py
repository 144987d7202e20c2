"""Patient aggregation and the patient-level summary.

A patient's AUC is the maximum of its records' AUCs (the mean is reported too). A
patient is "confidently at risk" when the at-risk test (`privacy_gate.at_risk`) says its
AUC exceeds ``at_risk_auc``, with Benjamini-Hochberg across patients (here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

__all__ = [
    "TAIL_COUNT_LEVELS",
    "PatientStats",
    "aggregate_patients",
    "benjamini_hochberg_count",
    "distribution_summary",
    "histogram",
    "survival_curve",
    "tail_counts",
]

TAIL_COUNT_LEVELS = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]


@dataclass(frozen=True)
class PatientStats:
    """Per-patient figures; every array is ``(n_patients,)``.

    Attributes:
        n_records: records of the patient.
        auc_max: patient AUC (max over its records).
        auc_mean: mean of its record AUCs.
        auc_se: standard error of the record that gives the maximum.
        worst_record: index of that record.
    """

    n_records: NDArray[np.int64]
    auc_max: FloatArray
    auc_mean: FloatArray
    auc_se: FloatArray
    worst_record: IndexArray


def aggregate_patients(
    record_auc: FloatArray, record_se: FloatArray, patient_index: IndexArray, n_patients: int
) -> PatientStats:
    """Aggregate record figures per patient (max and mean of the record AUCs).

    Args:
        record_auc: ``(n_records,)``.
        record_se: ``(n_records,)``.
        patient_index: ``(n_records,)`` patient of each record, in ``[0, n_patients)``,
            every patient having at least one record.
    """
    n_records = np.bincount(patient_index, minlength=n_patients).astype(np.int64)
    auc_mean = np.bincount(patient_index, weights=record_auc, minlength=n_patients) / n_records
    # Sort by (patient, auc descending): the first record of each block is the worst.
    order = np.lexsort((-record_auc, patient_index))
    starts = np.flatnonzero(np.r_[True, np.diff(patient_index[order]) != 0])
    worst = order[starts]
    return PatientStats(
        n_records=n_records,
        auc_max=record_auc[worst],
        auc_mean=auc_mean,
        auc_se=record_se[worst],
        worst_record=worst,
    )


def benjamini_hochberg_count(p_values: FloatArray, fdr: float, n_tests: int | None = None) -> int:
    """Number of hypotheses the Benjamini-Hochberg step-up procedure rejects at ``fdr``.

    ``n_tests`` is the number of hypotheses when only the smallest p-values are given.

    >>> benjamini_hochberg_count(np.array([0.001, 0.01, 0.03, 0.5]), 0.05)
    3
    """
    m = len(p_values) if n_tests is None else n_tests
    if m == 0 or len(p_values) == 0:
        return 0
    ordered = np.sort(np.asarray(p_values, dtype=np.float64))
    below = ordered <= fdr * np.arange(1, len(ordered) + 1) / m
    return int(np.flatnonzero(below)[-1] + 1) if below.any() else 0


def distribution_summary(values: FloatArray) -> dict[str, float]:
    """Max, median, mean and upper quantiles of a set of AUCs."""
    return {
        "max": float(np.max(values)),
        "median": float(np.median(values)),
        "mean": float(np.mean(values)),
        "q90": float(np.quantile(values, 0.9)),
        "q99": float(np.quantile(values, 0.99)),
    }


def tail_counts(
    patient_auc: FloatArray, levels: tuple[float, ...] = TAIL_COUNT_LEVELS
) -> dict[str, int]:
    """Patients with AUC >= each level, keyed by the level as a string.

    >>> tail_counts(np.array([0.55, 0.9, 0.99]), (0.6, 0.9))
    {'0.6': 2, '0.9': 2}
    """
    return {repr(level): int(np.count_nonzero(patient_auc >= level)) for level in levels}


def survival_curve(
    patient_auc: FloatArray, grid: FloatArray, *, level: float = 0.95
) -> dict[str, list[float]]:
    """Empirical survival function (share of patients with AUC >= x) with a band.

    The band is the exact (Clopper-Pearson) ``level`` interval of each share: how much
    the share could differ in another cohort of the same size. Measurement noise of the
    AUCs themselves is reported separately, as the noise floor.

    Args:
        patient_auc: ``(n_patients,)``.
        grid: ``(n_grid,)`` AUC values at which the curve is evaluated.
    """
    n_patients = len(patient_auc)
    above = n_patients - np.searchsorted(np.sort(patient_auc), grid, side="left")
    alpha = (1.0 - level) / 2.0
    lower = np.where(above > 0, special.betaincinv(above, n_patients - above + 1, alpha), 0.0)
    upper = np.where(
        above < n_patients, special.betaincinv(above + 1, n_patients - above, 1.0 - alpha), 1.0
    )
    return {
        "auc": [float(x) for x in grid],
        "share": [float(x) for x in above / n_patients],
        "lower": [float(x) for x in lower],
        "upper": [float(x) for x in upper],
    }


def histogram(values: FloatArray, bins: int = 50) -> dict[str, list[Any]]:
    """Counts of patient AUCs over [0.5, 1]."""
    counts, edges = np.histogram(values, bins=bins, range=(0.5, 1.0))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
