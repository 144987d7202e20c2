"""The at-risk test and its power: is a record's true AUC above ``at_risk_auc``?

The record AUC is ``A = Phi(d)`` with ``d = (mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2)``
(docs/statistics.md). The test of ``H0: A <= A0`` must hold its size AT THE BOUNDARY ``A = A0``
(``d0 = Phi^-1(A0)``) for any IN/OUT variance ratio, at the tiny levels Benjamini-Hochberg
uses. A z-test with the SE at the estimate does not (that SE collapses near AUC 1), and
neither does Welch's t with estimated degrees of freedom: with an SD ratio of 3 its size
at 5.5e-6 was 1.9-5.2x nominal, and one audit in four had a false discovery.

The test here is a Berger-Boos p-value (Berger & Boos 1994) for the Welch statistic
``T = (m_in - m_out) / sqrt(v_in/n_in + v_out/n_out)`` (``v`` unbiased sample variances):

- At a KNOWN variance ratio ``r = var_in / var_out`` the law of ``T`` at the boundary is
  exact and one-dimensional: write the two chi-square variances as ``S B`` and
  ``S (1 - B)`` with ``S ~ chi2(n_in + n_out - 2)`` independent of
  ``B ~ Beta((n_in - 1)/2, (n_out - 1)/2)``; given ``B``, ``T`` is a noncentral t with
  ``n_in + n_out - 2`` degrees of freedom times a constant, so
  ``p(t; r) = E_B[nct.sf(t sqrt(nu c_r(B)) / sd_r, nu, lambda_r)]`` (Gauss-Jacobi over
  ``B``, `_p_at_ratio`).
- The ratio is unknown: ``F = v_in / v_out`` gives the exact ``1 - beta`` interval
  ``[F / F_{1-beta/2}, F / F_{beta/2}]`` (F distribution); the p-value is the largest
  ``p(t; r)`` over that interval, plus ``beta``. It is valid (``P(p <= u) <= u``) for every
  true ratio, so BH's FDR holds. ``beta`` is a tenth of the smallest level any record is
  tested at in BH's first step, ``fdr / (n_patients * max_records)`` (`berger_boos_beta`).
- Where ``p <= 0.5`` the exact p-value over the interval peaks at one of its two
  endpoints (checked against a 120-point grid across counts, ratios and statistics in
  the tests), so the supremum is taken over the endpoints and the sample ratio. A record
  whose p-value at its own ``F`` already exceeds 0.5, or whose supremum does, gets 1.0:
  no rule uses a p-value above 0.5 (``gate.fdr <= 0.5``, the report keeps those up to
  0.5), and a larger p-value is still valid.

With equal variances and balanced counts ``p(t; 1)`` is the exact pooled t test; the
price of not knowing the ratio is measured in ``benchmarks/bench_at_risk_power.py`` (at
K = 64 and 9,000 patients the detectable AUC moves from 0.9971 to 0.9988; at K = 128 from
0.9867 to 0.9893). A patient takes its smallest record p-value times its record count
(Bonferroni); Benjamini-Hochberg across patients is in `privacy_gate.patients`.

Power is computed for this same test under Gaussian scores at a given true variance ratio
(default equal): per Gauss-Jacobi node of ``B`` the rejection threshold of ``T`` is solved
from the p-value, then the noncentral-t tail at the alternative is integrated: the
test's own power, not an approximation of another test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from privacy_gate.record_stats import RecordMoments

__all__ = [
    "AT_RISK_TEST",
    "BERGER_BOOS_SHARE",
    "DEFAULT_DETECTION_POWER",
    "EXACT_BELOW",
    "AuditPower",
    "audit_power",
    "berger_boos_beta",
    "count_pairs",
    "detectable_auc",
    "detection_power",
    "patient_p_values",
    "record_p_values",
]

AT_RISK_TEST = "berger_boos_t"
"""The report's name of this test (reports of schema 2.3 and older: ``noncentral_t``)."""
DEFAULT_DETECTION_POWER = 0.8
"""The power at which an audit states the smallest AUC it detects."""
BERGER_BOOS_SHARE = 0.1
"""``beta`` as a share of the smallest first-step BH level of a record."""
EXACT_BELOW = 0.5
"""Record p-values up to this are exact; larger ones are reported as 1.0."""

_JACOBI_NODES = ((7, 128), (15, 64), (None, 32))
"""Gauss-Jacobi nodes by the smaller side's degrees of freedom: with few, an extreme
ratio makes the integrand nearly singular at one end (measured relative error below
1e-7 with these counts, against 5e-5 with 32 nodes at 3 degrees of freedom)."""
_RATIO_POINTS = 2
_RATIO_CLIP = 1e30
_BISECTIONS = 44
_AUC_TOP = 1.0 - 1e-12

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def berger_boos_beta(fdr: float, n_patients: int, max_records: int = 1) -> float:
    """The ``beta`` of an audit: `BERGER_BOOS_SHARE` of ``fdr / (n_patients * max_records)``.

    >>> berger_boos_beta(0.05, 1000, 5) == 0.1 * 0.05 / 5000
    True
    """
    return BERGER_BOOS_SHARE * fdr / (max(n_patients, 1) * max(max_records, 1))


@lru_cache(maxsize=512)
def _jacobi(n_in: int, n_out: int) -> tuple[FloatArray, FloatArray]:
    """Nodes and weights of ``B ~ Beta((n_in - 1)/2, (n_out - 1)/2)`` (Gauss-Jacobi)."""
    fewest = min(n_in, n_out) - 1
    nodes = next(m for most, m in _JACOBI_NODES if most is None or fewest <= most)
    x, w = special.roots_jacobi(nodes, (n_out - 1) / 2 - 1, (n_in - 1) / 2 - 1)
    return (x + 1.0) / 2.0, w / w.sum()


def _nct_sf(x: FloatArray, nu: float, lam: FloatArray) -> FloatArray:
    """``nct.sf``; Boost's "series did not converge" far in the tail (values below 1e-250,
    where it returns its closest value) is not a problem of the test, so it is not shown."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
        warnings.filterwarnings("ignore", "Error in function cdf", RuntimeWarning)
        return np.asarray(stats.nct.sf(x, nu, lam), dtype=np.float64)


def _p_at_ratio(t: FloatArray, r: FloatArray, n_in: int, n_out: int, d0: float) -> FloatArray:
    """The exact boundary p-value of the Welch statistic ``t`` at variance ratio ``r``
    (``t`` and ``r`` broadcast together)."""
    b, w = _jacobi(n_in, n_out)
    f_in, f_out = n_in - 1.0, n_out - 1.0
    nu = f_in + f_out
    r = np.clip(np.asarray(r, dtype=np.float64), 1.0 / _RATIO_CLIP, _RATIO_CLIP)
    sd = np.sqrt(r / n_in + 1.0 / n_out)
    lam = d0 * np.sqrt(r + 1.0) / sd
    scale = np.sqrt(nu * (r[..., None] * b / (f_in * n_in) + (1.0 - b) / (f_out * n_out)))
    x = np.asarray(t, dtype=np.float64)[..., None] * scale / sd[..., None]
    return np.asarray(_nct_sf(x, nu, lam[..., None]) @ w, dtype=np.float64)


def _ratio_grid(ratio: FloatArray, n_in: int, n_out: int, beta: float) -> FloatArray:
    """``_RATIO_POINTS`` geometric points of the ``1 - beta`` interval of the variance
    ratio given the sample ratio ``ratio`` (2: its endpoints), shape ``(..., points)``."""
    upper = float(stats.f.isf(beta / 2.0, n_in - 1, n_out - 1))
    lower = float(stats.f.ppf(beta / 2.0, n_in - 1, n_out - 1))
    steps = np.linspace(0.0, 1.0, _RATIO_POINTS)
    log_lo = np.log(np.clip(ratio, 1.0 / _RATIO_CLIP, _RATIO_CLIP)) - math.log(upper)
    width = math.log(upper) - math.log(lower)
    return np.asarray(np.exp(log_lo[..., None] + steps * width), dtype=np.float64)


def _berger_boos(
    t: FloatArray, ratio: FloatArray, n_in: int, n_out: int, d0: float, beta: float
) -> FloatArray:
    """Berger-Boos p-values of records with the same counts (module docstring)."""
    at_own = _p_at_ratio(t, ratio, n_in, n_out, d0) + beta  # a lower bound: F is in the CI
    p = np.ones(len(t))
    need = np.flatnonzero(np.nan_to_num(at_own, nan=1.0) <= EXACT_BELOW)
    if len(need):
        grid = _ratio_grid(ratio[need], n_in, n_out, beta)
        sup = _p_at_ratio(t[need, None], grid, n_in, n_out, d0).max(axis=1)
        p[need] = np.maximum(sup + beta, at_own[need])
    p = np.where(p <= EXACT_BELOW, p, 1.0)  # above, the endpoints need not hold the sup
    return np.clip(np.nan_to_num(p, nan=1.0), 0.0, 1.0)


def record_p_values(moments: RecordMoments, at_risk_auc: float, beta: float) -> FloatArray:
    """One-sided Berger-Boos p-value per record for "record AUC > at_risk_auc", valid at
    the boundary for every IN/OUT variance ratio (module docstring).

    A record with fewer than 2 IN or 2 OUT scores cannot be tested and gets p = 1; a
    p-value above `EXACT_BELOW` is reported as 1.

    Args:
        beta: the interval's miss probability (`berger_boos_beta`), in (0, 0.5).

    Returns:
        ``(n_records,)`` p-values in [beta, 1].
    """
    if not 0.0 < beta < EXACT_BELOW:
        raise ValueError(f"beta must be in (0, {EXACT_BELOW}); got {beta!r}")
    n_in = moments.n_in.astype(np.int64)
    n_out = moments.n_out.astype(np.int64)
    d0 = float(special.ndtri(at_risk_auc))
    p = np.ones(len(n_in))
    testable = (n_in >= 2) & (n_out >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        v_in = moments.sd_in**2 * n_in / (n_in - 1.0)
        v_out = moments.sd_out**2 * n_out / (n_out - 1.0)
        t = (moments.mu_in - moments.mu_out) / np.sqrt(v_in / n_in + v_out / n_out)
        ratio = v_in / v_out
    for a, b, _ in count_pairs(n_in[testable], n_out[testable]):
        idx = np.flatnonzero(testable & (n_in == a) & (n_out == b))
        p[idx] = _berger_boos(t[idx], ratio[idx], int(a), int(b), d0, beta)
    return p


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


@lru_cache(maxsize=512)
def _rejection_thresholds(
    n_in: int, n_out: int, at_risk_auc: float, level: float, beta: float, variance_ratio: float
) -> FloatArray:
    """Per Gauss-Jacobi node of ``B``, the smallest Welch ``t`` whose Berger-Boos p-value
    (without its ``beta``) is at most ``level``, for samples whose ratio ``F`` is the one
    that node gives at the true ``variance_ratio``."""
    b, _ = _jacobi(n_in, n_out)
    d0 = float(special.ndtri(at_risk_auc))
    ratio = variance_ratio * (b / (n_in - 1.0)) / ((1.0 - b) / (n_out - 1.0))
    grid = _ratio_grid(ratio, n_in, n_out, beta)  # (nodes, points)
    lo = np.full(grid.shape, math.log(1e-6))
    hi = np.full(grid.shape, math.log(1e8))
    for _ in range(_BISECTIONS):  # p(t; r) falls with t: bisect on log t, all at once
        mid = (lo + hi) / 2.0
        above = _p_at_ratio(np.exp(mid), grid, n_in, n_out, d0) > level
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    threshold = np.exp(hi).max(axis=1)  # the supremum over the interval rejects last
    unreached = _p_at_ratio(np.exp(hi), grid, n_in, n_out, d0).max(axis=1) > level
    return np.asarray(np.where(unreached, np.inf, threshold), dtype=np.float64)


def detection_power(
    true_auc: float | FloatArray,
    at_risk_auc: float,
    n_in: int,
    n_out: int,
    alpha: float,
    *,
    beta: float | None = None,
    variance_ratio: float = 1.0,
) -> FloatArray:
    """Probability that the at-risk test rejects at level ``alpha`` for a record whose
    true AUC is ``true_auc`` (Gaussian scores; ``variance_ratio = var_in / var_out``).

    At ``true_auc == at_risk_auc`` this is the test's size, at most ``alpha``.

    Args:
        beta: the test's ``beta``; default ``BERGER_BOOS_SHARE * alpha``.
    """
    beta = BERGER_BOOS_SHARE * alpha if beta is None else beta
    if n_in < 2 or n_out < 2 or not 0.0 < beta < alpha:
        return np.zeros(np.shape(true_auc))
    thresholds = _rejection_thresholds(
        int(n_in), int(n_out), float(at_risk_auc), float(alpha - beta), float(beta),
        float(variance_ratio),
    )  # fmt: skip
    b, w = _jacobi(n_in, n_out)
    r = variance_ratio
    nu = n_in + n_out - 2.0
    sd = math.sqrt(r / n_in + 1.0 / n_out)
    scale = np.sqrt(nu * (r * b / ((n_in - 1.0) * n_in) + (1.0 - b) / ((n_out - 1.0) * n_out)))
    d = special.ndtri(np.asarray(true_auc, dtype=np.float64))
    lam = d * math.sqrt(r + 1.0) / sd
    tail = _nct_sf(thresholds * scale / sd, nu, lam[..., None])
    return np.asarray(np.nan_to_num(tail, nan=0.0) @ w, dtype=np.float64)


def detectable_auc(
    at_risk_auc: float,
    n_in: int,
    n_out: int,
    alpha: float,
    power: float = DEFAULT_DETECTION_POWER,
    *,
    beta: float | None = None,
    variance_ratio: float = 1.0,
) -> float:
    """The smallest true record AUC the at-risk test detects with ``power`` at ``alpha``
    (``beta`` and ``variance_ratio`` as in `detection_power`).

    Returns 1.0 when not even an AUC of ``1 - 1e-12`` reaches that power.
    """

    def power_at(auc: float) -> float:
        return float(
            detection_power(
                auc, at_risk_auc, n_in, n_out, alpha, beta=beta, variance_ratio=variance_ratio
            )
        )

    if power_at(_AUC_TOP) < power:
        return 1.0
    lo, hi = float(at_risk_auc), _AUC_TOP
    # Bisect on the probit scale, where the power curve is smooth.
    lo_d, hi_d = float(special.ndtri(lo)), float(special.ndtri(hi))
    for _ in range(60):
        mid = 0.5 * (lo_d + hi_d)
        if power_at(float(special.ndtr(mid))) >= power:
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
        beta: the Berger-Boos ``beta`` of the audit's p-values (`berger_boos_beta`).
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
    beta: float
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
    beta: float | None = None,
) -> AuditPower:
    """The audit's detectable AUC: the worst over its distinct IN/OUT count pairs, for a
    one-record patient and for a patient with ``max_records`` records of which one leaks.

    Args:
        pairs: ``[n_in, n_out, n_records]`` triples (`count_pairs`).
        n_patients: patients in the audit pool (the Benjamini-Hochberg family).
        max_records: the most records of one patient in the pool.
        beta: the p-values' ``beta``; default `berger_boos_beta` of this pool.
    """
    alpha = fdr / max(n_patients, 1)
    beta = berger_boos_beta(fdr, n_patients, max_records) if beta is None else beta
    worst = (1.0, 0, 0) if not pairs else (-1.0, 0, 0)
    for n_in, n_out, _ in pairs:
        auc = detectable_auc(at_risk_auc, int(n_in), int(n_out), alpha, power, beta=beta)
        if auc > worst[0]:
            worst = (auc, int(n_in), int(n_out))
    multi = None
    if max_records > 1 and worst[1] >= 2 and worst[2] >= 2:
        multi = detectable_auc(
            at_risk_auc, worst[1], worst[2], alpha / max_records, power, beta=beta
        )
    return AuditPower(
        alpha=alpha,
        beta=beta,
        power=power,
        detectable_auc=worst[0],
        n_in=worst[1],
        n_out=worst[2],
        max_records=max(1, int(max_records)),
        detectable_auc_max_records=multi,
    )
