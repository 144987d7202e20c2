"""Each patient's chance to be in the exposed tail when nothing leaks (the null).

A patient's AUC is the maximum over its records, so under the null a patient with 6
records reaches the top 1% far more often than one with 1 record (measured: with 10% of
patients at 6 records and the rest at 1-2, pool shares as expectations gave 66% false
subgroup violations). `privacy_gate.subgroups` takes a group's expected tail share from
these chances instead.

- permutation null: the share of replicates whose null tail (same definition as the
  observed tail) holds the patient (`NullTailCounter`, fed by the noise floor's
  replicates, which keep each patient's records and masks together);
- analytic null (balanced counts, independent Gaussian records):
  ``1 - prod_records F_r(c)``, with ``c`` set so the chances sum to the tail's size.

Both are then averaged over patients with the same number of records (`pooled_by_records`):
the number of records is the confounder, and pooling removes most of the Monte-Carlo
noise of a few hundred replicates.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from privacy_gate.noise_floor import NoiseFloor, NullMethod, _count_pairs, _null_cdf
from privacy_gate.subgroups import tail_patients

__all__ = ["NullTailCounter", "analytic_tail_chance", "null_tail_chance", "pooled_by_records"]

FloatArray = NDArray[np.float64]


class NullTailCounter:
    """Counts, per patient, the permutation replicates whose null tail holds it (pass it
    as ``on_replicate`` to `privacy_gate.noise_floor.compute_noise_floor`)."""

    def __init__(self, n_patients: int, tail_quantile: float) -> None:
        self.hits = np.zeros(n_patients, dtype=np.int64)
        self.replicates = 0
        self.tail_quantile = tail_quantile

    def __call__(self, null_patient_auc: FloatArray) -> None:
        in_tail, _, _ = tail_patients(null_patient_auc, self.tail_quantile)
        self.hits += in_tail
        self.replicates += 1

    def chance(self) -> FloatArray:
        return np.asarray(self.hits / max(self.replicates, 1), dtype=np.float64)


def analytic_tail_chance(
    n_in: NDArray[np.int64],
    n_out: NDArray[np.int64],
    patient_index: NDArray[np.intp],
    n_patients: int,
    target: int,
) -> FloatArray:
    """``P(patient AUC >= c)`` under the analytic null, ``c`` such that the chances add up
    to ``target`` patients (bisection on the probit scale)."""
    n_in_u, n_out_u, inverse, _ = _count_pairs(n_in, n_out)

    def chances(d: float) -> FloatArray:
        log_cdf = np.log(np.maximum(_null_cdf(d, n_in_u, n_out_u), 1e-300))[inverse]
        per_patient = np.bincount(patient_index, weights=log_cdf, minlength=n_patients)
        return np.asarray(-np.expm1(per_patient), dtype=np.float64)

    lo, hi = 0.0, 50.0
    for _ in range(80):  # the summed chance falls as the threshold d rises
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(chances(mid).sum()) > target else (lo, mid)
    return chances(hi)


def pooled_by_records(chance: FloatArray, n_records: NDArray[np.int64]) -> FloatArray:
    """Each patient's chance replaced by the mean over patients with its record count.

    >>> pooled_by_records(np.array([0.0, 0.2, 0.5]), np.array([1, 1, 3])).tolist()
    [0.1, 0.1, 0.5]
    """
    classes, inverse = np.unique(n_records, return_inverse=True)
    inverse = inverse.ravel()
    total = np.bincount(inverse, weights=chance, minlength=len(classes))
    count = np.bincount(inverse, minlength=len(classes))
    return np.asarray((total / count)[inverse], dtype=np.float64)


def null_tail_chance(
    floor: NoiseFloor,
    counter: NullTailCounter,
    masks: NDArray[np.bool_],
    patient_index: NDArray[np.intp],
    n_patients: int,
    tail_quantile: float,
) -> FloatArray:
    """The chances of an audit, from the null its noise floor used (module docstring)."""
    n_records = np.bincount(patient_index, minlength=n_patients).astype(np.int64)
    if floor.method is NullMethod.ANALYTIC or counter.replicates == 0:
        n_in = masks.sum(axis=0, dtype=np.int64)
        n_out = masks.shape[0] - n_in
        _, _, target = tail_patients(np.zeros(n_patients), tail_quantile)
        chance = analytic_tail_chance(n_in, n_out, patient_index, n_patients, target)
    else:
        chance = counter.chance()
    return pooled_by_records(chance, n_records)
