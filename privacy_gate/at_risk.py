"""The at-risk test and its power: is a record's true AUC above ``at_risk_auc``?

The record AUC is ``A = Phi(d)`` with ``d = (mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2)``
(DESIGN.md). The test of ``H0: A <= A0`` must hold its size AT THE BOUNDARY ``A = A0``,
where ``d0 = Phi^-1(A0)``. A z-test with the Hanley-McNeil SE at the *estimate* does not:
that SE collapses as the estimate nears 1, so records at exactly ``A0`` reach tiny
p-values far more often than nominal. Here the null distribution is taken at ``d0``:

- pooled: under Gaussian scores with equal IN/OUT variances,
  ``T = (m_in - m_out) / (s_p sqrt(1/n_in + 1/n_out))`` is noncentral t with
  ``n_in + n_out - 2`` degrees of freedom and noncentrality
  ``sqrt(2) d0 / sqrt(1/n_in + 1/n_out)``: an exact p-value for any counts;
- Welch: ``T = (m_in - m_out) / sqrt(v_in/n_in + v_out/n_out)``, noncentral t with the
  Welch-Satterthwaite degrees of freedom and noncentrality
  ``d0 sqrt(v_in + v_out) / sqrt(v_in/n_in + v_out/n_out)``, for unequal variances.

A record's p-value is the larger of the two, so it is never below the exact one when the
variances are equal, and follows Welch when they are not (``v`` are the unbiased sample
variances). A patient takes its smallest record p-value times its record count
(Bonferroni); Benjamini-Hochberg across patients is in `privacy_gate.patients`.

Limitation (measured, 200,000-300,000 records per case at the boundary): with UNEQUAL
true variances (ratio 3) Welch's estimated degrees of freedom make the test liberal at
small levels: 1.1-1.45x nominal at 1e-3 and 1.35-2x at 1e-4 (most for unbalanced counts
whose smaller side has the larger variance). Hsu's conservative ``min(n_in, n_out) - 1``
degrees of freedom would restore the size but cut it to 0-14% of nominal at 1e-4, most
of the power, so it is not used. With equal variances the test is exact.

Power is computed for the same two-part test, under Gaussian scores with equal
variances, by integrating over the two sample variances (Gauss-Legendre on their
quantiles): it is the test's own power, not an approximation of another test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from privacy_gate.record_stats import RecordMoments

__all__ = [
    "DEFAULT_DETECTION_POWER",
    "AuditPower",
    "audit_power",
    "count_pairs",
    "detectable_auc",
    "detection_power",
    "patient_p_values",
    "record_p_values",
]

DEFAULT_DETECTION_POWER = 0.8
"""The power at which an audit states the smallest AUC it detects."""

_QUADRATURE_NODES = 48
_AUC_TOP = 1.0 - 1e-12

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _unbiased(sd: FloatArray, n: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(sd**2 * n / (n - 1.0), dtype=np.float64)


def _p_values(
    diff: FloatArray,
    v_in: FloatArray,
    v_out: FloatArray,
    n_in: FloatArray,
    n_out: FloatArray,
    d0: float,
) -> FloatArray:
    """``max(pooled, Welch)`` noncentral-t p-values (all arrays broadcast together)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        df_pooled = n_in + n_out - 2.0
        pooled_var = ((n_in - 1.0) * v_in + (n_out - 1.0) * v_out) / df_pooled
        inv = 1.0 / n_in + 1.0 / n_out
        t_pooled = diff / np.sqrt(pooled_var * inv)
        lam_pooled = math.sqrt(2.0) * d0 / np.sqrt(inv)
        a, b = v_in / n_in, v_out / n_out
        t_welch = diff / np.sqrt(a + b)
        lam_welch = d0 * np.sqrt(v_in + v_out) / np.sqrt(a + b)
        df_welch = (a + b) ** 2 / (a**2 / (n_in - 1.0) + b**2 / (n_out - 1.0))
        p = np.maximum(
            stats.nct.sf(t_pooled, df_pooled, lam_pooled),
            stats.nct.sf(t_welch, df_welch, lam_welch),
        )
    return np.asarray(p, dtype=np.float64)


def record_p_values(moments: RecordMoments, at_risk_auc: float) -> FloatArray:
    """One-sided p-value per record for "record AUC > at_risk_auc", size held at the
    boundary (module docstring).

    A record with fewer than 2 IN or 2 OUT scores cannot be tested and gets p = 1.

    Returns:
        ``(n_records,)`` p-values in [0, 1].
    """
    n_in = moments.n_in.astype(np.float64)
    n_out = moments.n_out.astype(np.float64)
    testable = (moments.n_in >= 2) & (moments.n_out >= 2)
    p = np.ones(len(n_in))
    if testable.any():
        idx = np.flatnonzero(testable)
        p[idx] = _p_values(
            moments.mu_in[idx] - moments.mu_out[idx],
            _unbiased(moments.sd_in[idx], n_in[idx]),
            _unbiased(moments.sd_out[idx], n_out[idx]),
            n_in[idx],
            n_out[idx],
            float(special.ndtri(at_risk_auc)),
        )
    # Exactly separated scores (both sides at the variance floor) give t = inf: p = 0.
    return np.clip(np.nan_to_num(p, nan=1.0), 0.0, 1.0)


def patient_p_values(
    record_p: FloatArray, patient_index: NDArray[np.intp], n_patients: int
) -> FloatArray:
    """A patient's p-value: its smallest record p-value times its record count
    (Bonferroni within the patient), capped at 1.

    >>> patient_p_values(np.array([0.01, 0.2, 0.3]), np.array([0, 0, 1]), 2).tolist()
    [0.02, 0.3]
    """
    smallest = np.full(n_patients, np.inf)
    np.minimum.at(smallest, patient_index, record_p)
    counts = np.bincount(patient_index, minlength=n_patients)
    with np.errstate(invalid="ignore"):  # inf * 0 for a patient without records
        adjusted = np.where(counts > 0, np.minimum(smallest * counts, 1.0), 1.0)
    return np.asarray(adjusted, dtype=np.float64)


@lru_cache(maxsize=256)
def _variance_grid(n_in: int, n_out: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Quadrature over the two sample variances at unit true variance: node values of
    ``v_in``, ``v_out`` (each ``chi2(n - 1) / (n - 1)``) and weights, on a tensor grid."""
    u, w = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    u, w = (u + 1.0) / 2.0, w / 2.0
    v_in = stats.chi2.ppf(u, n_in - 1) / (n_in - 1)
    v_out = stats.chi2.ppf(u, n_out - 1) / (n_out - 1)
    grid_in, grid_out = np.meshgrid(v_in, v_out, indexing="ij")
    return grid_in.ravel(), grid_out.ravel(), np.outer(w, w).ravel()


@lru_cache(maxsize=256)
def _rejection_threshold(n_in: int, n_out: int, at_risk_auc: float, alpha: float) -> FloatArray:
    """Per quadrature node, the smallest ``m_in - m_out`` the test rejects at ``alpha``."""
    v_in, v_out, _ = _variance_grid(n_in, n_out)
    d0 = float(special.ndtri(at_risk_auc))
    df_pooled = n_in + n_out - 2.0
    inv = 1.0 / n_in + 1.0 / n_out
    pooled_sd = np.sqrt(((n_in - 1.0) * v_in + (n_out - 1.0) * v_out) / df_pooled * inv)
    lam_pooled = math.sqrt(2.0) * d0 / math.sqrt(inv)
    a, b = v_in / n_in, v_out / n_out
    lam_welch = d0 * np.sqrt(v_in + v_out) / np.sqrt(a + b)
    df_welch = (a + b) ** 2 / (a**2 / (n_in - 1.0) + b**2 / (n_out - 1.0))
    crit_pooled = float(stats.nct.isf(alpha, df_pooled, lam_pooled))
    crit_welch = stats.nct.isf(alpha, df_welch, lam_welch)
    return np.asarray(np.maximum(crit_pooled * pooled_sd, crit_welch * np.sqrt(a + b)))


def detection_power(
    true_auc: float | FloatArray, at_risk_auc: float, n_in: int, n_out: int, alpha: float
) -> FloatArray:
    """Probability that the at-risk test rejects at level ``alpha`` for a record whose
    true AUC is ``true_auc`` (Gaussian scores, equal IN/OUT variances).

    At ``true_auc == at_risk_auc`` this is the test's size, at most ``alpha``.
    """
    if n_in < 2 or n_out < 2:
        return np.zeros(np.shape(true_auc))
    _, _, weights = _variance_grid(n_in, n_out)
    threshold = _rejection_threshold(n_in, n_out, float(at_risk_auc), float(alpha))
    scale = math.sqrt(1.0 / n_in + 1.0 / n_out)
    delta = math.sqrt(2.0) * special.ndtri(np.asarray(true_auc, dtype=np.float64))
    z = (delta[..., None] - threshold) / scale
    return np.asarray(special.ndtr(z) @ weights, dtype=np.float64)


def detectable_auc(
    at_risk_auc: float,
    n_in: int,
    n_out: int,
    alpha: float,
    power: float = DEFAULT_DETECTION_POWER,
) -> float:
    """The smallest true record AUC the at-risk test detects with ``power`` at ``alpha``.

    Returns 1.0 when not even an AUC of ``1 - 1e-12`` reaches that power.
    """
    if float(detection_power(_AUC_TOP, at_risk_auc, n_in, n_out, alpha)) < power:
        return 1.0
    lo, hi = float(at_risk_auc), _AUC_TOP
    # Bisect on the probit scale, where the power curve is smooth.
    lo_d, hi_d = float(special.ndtri(lo)), float(special.ndtri(hi))
    for _ in range(60):
        mid = 0.5 * (lo_d + hi_d)
        if float(detection_power(special.ndtr(mid), at_risk_auc, n_in, n_out, alpha)) >= power:
            hi_d = mid
        else:
            lo_d = mid
    return float(special.ndtr(hi_d))


def count_pairs(n_in: NDArray[np.integer[Any]], n_out: NDArray[np.integer[Any]]) -> list[list[int]]:
    """The distinct ``[n_in, n_out, n_records]`` triples of an audit, sorted.

    >>> count_pairs(np.array([2, 2, 3]), np.array([2, 2, 1]))
    [[2, 2, 2], [3, 1, 1]]
    """
    pairs, counts = np.unique(np.stack([n_in, n_out]), axis=1, return_counts=True)
    return [[int(a), int(b), int(c)] for a, b, c in zip(pairs[0], pairs[1], counts, strict=True)]


@dataclass(frozen=True)
class AuditPower:
    """What an audit's at-risk test can detect.

    Attributes:
        alpha: the level a single exposed patient must reach: ``fdr / n_patients``
            (Benjamini-Hochberg's first step).
        power: the power at which ``detectable_auc`` is stated.
        detectable_auc: the smallest true AUC of a one-record patient found with
            ``power``, at the least favourable IN/OUT counts of the audit.
        n_in, n_out: those counts.
        max_records: the most records one patient of the pool has.
        detectable_auc_max_records: the same for one leaking record of such a patient,
            whose p-value is multiplied by its record count (Bonferroni within the
            patient), so it must reach ``alpha / max_records``; None when every patient
            has one record.
    """

    alpha: float
    power: float
    detectable_auc: float
    n_in: int
    n_out: int
    max_records: int = 1
    detectable_auc_max_records: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit_power(
    pairs: list[list[int]],
    n_patients: int,
    *,
    at_risk_auc: float,
    fdr: float,
    power: float = DEFAULT_DETECTION_POWER,
    max_records: int = 1,
) -> AuditPower:
    """The audit's detectable AUC: the worst over its distinct IN/OUT count pairs, for a
    one-record patient and for a patient with ``max_records`` records of which one leaks.

    Args:
        pairs: ``[n_in, n_out, n_records]`` triples (`count_pairs`).
        n_patients: patients in the audit pool (the Benjamini-Hochberg family).
        max_records: the most records of one patient in the pool.
    """
    alpha = fdr / max(n_patients, 1)
    worst = (1.0, 0, 0) if not pairs else (-1.0, 0, 0)
    for n_in, n_out, _ in pairs:
        auc = detectable_auc(at_risk_auc, int(n_in), int(n_out), alpha, power)
        if auc > worst[0]:
            worst = (auc, int(n_in), int(n_out))
    multi = None
    if max_records > 1 and worst[1] >= 2 and worst[2] >= 2:
        multi = detectable_auc(at_risk_auc, worst[1], worst[2], alpha / max_records, power)
    return AuditPower(
        alpha=alpha,
        power=power,
        detectable_auc=worst[0],
        n_in=worst[1],
        n_out=worst[2],
        max_records=max(1, int(max_records)),
        detectable_auc_max_records=multi,
    )
