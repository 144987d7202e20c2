"""The noise floor: how high patient AUCs get from estimation noise alone.

With few reference models a record that does not leak at all still gets a high record
AUC by chance, and the maximum over thousands of patients is far from 0.5. The null
distribution keeps every record's IN/OUT counts and removes any membership effect:

- ``permutation`` (the definition): permute each record's IN/OUT labels across the
  reference models and recompute, ``replicates`` times;
- ``analytic`` (for large audits): under a Gaussian null with equal variances the
  binormal statistic ``d = (mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2)`` (ddof=0) is
  a scaled Student t: ``d = t * c``, ``t ~ t(n_in + n_out - 2)``,
  ``c = sqrt((1/n_in + 1/n_out) / ((n_in - 1)/n_in + (n_out - 1)/n_out))``; records are
  independent, so the null maximum has CDF ``prod_i F_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from privacy_gate.record_stats import binormal_auc, hanley_mcneil_se, record_moments

__all__ = [
    "NoiseFloor",
    "NullMethod",
    "analytic_null_max_quantile",
    "compute_noise_floor",
    "reference_models_for_tail_se",
    "reference_models_needed",
]

PERMUTATION_BUDGET = 50_000_000
"""Largest ``replicates * n_models * n_records`` done by permutation; above it the
analytic null is used (same answer for Gaussian scores, see the tests)."""

MAX_REFERENCE_MODELS_SEARCHED = 4096
NULL_QUANTILE = 0.95

FloatArray = NDArray[np.float64]


class NullMethod(str, Enum):
    PERMUTATION = "permutation"
    ANALYTIC = "analytic"


@dataclass(frozen=True)
class NoiseFloor:
    """Null figures reported beside every patient-level figure.

    Attributes:
        method: how the null was computed.
        replicates: permutation replicates (None for the analytic null).
        max_patient_auc_q95: 95th percentile of the null maximum patient AUC.
        expected_at_risk: null expected number of patients with AUC > ``at_risk_auc``.
        reference_models_needed: smallest even K whose floor is below ``limit`` for this
            many records (None without a limit, or beyond the search range).
        limit: the lowest patient-level AUC limit of the policy, if any.
    """

    method: NullMethod
    replicates: int | None
    max_patient_auc_q95: float
    expected_at_risk: float
    reference_models_needed: int | None
    limit: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.value,
            "replicates": self.replicates,
            "max_patient_auc_q95": self.max_patient_auc_q95,
            "expected_at_risk": self.expected_at_risk,
            "reference_models_needed": self.reference_models_needed,
            "limit": self.limit,
        }


def _scale(n_in: FloatArray, n_out: FloatArray) -> FloatArray:
    """``c`` such that the null binormal statistic is ``c * t(n_in + n_out - 2)``."""
    spread = (n_in - 1.0) / n_in + (n_out - 1.0) / n_out
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 / n_in + 1.0 / n_out) / spread)


def _null_cdf(d: float | FloatArray, n_in: FloatArray, n_out: FloatArray) -> FloatArray:
    """P(binormal statistic <= d) per record under the analytic null."""
    df = n_in + n_out - 2.0
    scale = _scale(n_in, n_out)
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf = stats.t.cdf(d / scale, np.maximum(df, 1.0))
    # With fewer than 2 IN and 2 OUT scores the statistic is degenerate: treat as +inf.
    return np.where((df >= 1.0) & np.isfinite(scale), cdf, 0.0)


def _count_pairs(
    n_in: NDArray[np.integer[Any]], n_out: NDArray[np.integer[Any]]
) -> tuple[FloatArray, FloatArray, NDArray[np.intp], NDArray[np.intp]]:
    """The distinct ``(n_in, n_out)`` pairs (as floats, in lexicographic order), each
    record's pair and each pair's record count: ``np.unique(np.stack([n_in, n_out]),
    axis=1, ...)``, computed on one integer key per record when the counts allow it."""
    if (
        n_in.ndim == n_out.ndim == 1
        and np.issubdtype(n_in.dtype, np.integer)
        and np.issubdtype(n_out.dtype, np.integer)
        and n_in.size
        and min(int(n_in.min()), int(n_out.min())) >= 0
        and (int(n_in.max()) + 1) * (int(n_out.max()) + 1) < 2**62
    ):
        base = int(n_out.max()) + 1
        key = n_in.astype(np.int64) * base + n_out.astype(np.int64)
        keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return (keys // base).astype(np.float64), (keys % base).astype(np.float64), inverse, counts
    pairs, inverse, counts = np.unique(
        np.stack([n_in, n_out]), axis=1, return_inverse=True, return_counts=True
    )
    return pairs[0].astype(np.float64), pairs[1].astype(np.float64), inverse, counts


def analytic_null_max_quantile(
    n_in: NDArray[np.integer[Any]], n_out: NDArray[np.integer[Any]], quantile: float = NULL_QUANTILE
) -> float:
    """The ``quantile`` of the null maximum record AUC (= maximum patient AUC).

    Solves ``sum_i log F_i(d) = log(quantile)`` by bisection on ``d``; records with
    equal counts are grouped, so the cost is independent of the number of records.
    """
    n_in_u, n_out_u, _, counts = _count_pairs(n_in, n_out)
    target = math.log(quantile)

    def excess(d: float) -> float:
        with np.errstate(divide="ignore"):
            return float(np.sum(counts * np.log(_null_cdf(d, n_in_u, n_out_u)))) - target

    lo, hi = 0.0, 1.0
    while excess(hi) < 0.0 and hi < 1e6:
        hi *= 2.0
    if excess(hi) < 0.0:
        return float(
            binormal_auc(np.array([1.0]), np.array([0.0]), np.array([0.0]), np.array([0.0]))[0]
        )
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0.0 else (lo, mid)
    return float(np.clip(special.ndtr(hi), 0.5, 1.0 - 1e-10))


def _analytic_expected_at_risk(
    n_in: NDArray[np.integer[Any]],
    n_out: NDArray[np.integer[Any]],
    patient_index: NDArray[np.intp],
    n_patients: int,
    at_risk_auc: float,
) -> float:
    d = float(special.ndtri(at_risk_auc))
    # The null CDF depends on the counts only: evaluate it once per distinct pair.
    n_in_u, n_out_u, inverse, _ = _count_pairs(n_in, n_out)
    log_cdf = np.log(np.maximum(_null_cdf(d, n_in_u, n_out_u), 1e-300))[inverse]
    per_patient = np.bincount(patient_index, weights=log_cdf, minlength=n_patients)
    return float(np.sum(-np.expm1(per_patient)))


def reference_models_needed(
    n_records: int, limit: float, quantile: float = NULL_QUANTILE
) -> int | None:
    """Smallest even K (each record IN for K/2) whose null-max quantile is below ``limit``.

    >>> reference_models_needed(9105, 0.9)
    36
    """
    target = -math.expm1(math.log(quantile) / n_records)  # P(one record exceeds)
    d_limit = float(special.ndtri(limit))
    for k in range(4, MAX_REFERENCE_MODELS_SEARCHED + 1, 2):
        half = k / 2.0
        scale = float(_scale(np.array([half]), np.array([half]))[0])
        if scale * float(stats.t.isf(target, k - 2)) < d_limit:
            return k
    return None


def reference_models_for_tail_se(max_tail_se: float) -> int | None:
    """Smallest even K whose record AUC standard error is within ``max_tail_se`` whatever the
    record's AUC (the Hanley-McNeil SE is largest at AUC 0.5, the AUC of a record that a
    well-protected model does not leak), each record IN for K/2 models.

    The ``max_tail_se`` rule then cannot fail a model just for being private.

    >>> reference_models_for_tail_se(0.05)
    136
    """
    for k in range(4, MAX_REFERENCE_MODELS_SEARCHED + 1, 2):
        half = np.array([k // 2])
        if float(hanley_mcneil_se(np.array([0.5]), half, half)[0]) <= max_tail_se:
            return k
    return None


def _permuted_null(
    scores: NDArray[np.floating[Any]],
    masks: NDArray[np.bool_],
    patient_index: NDArray[np.intp],
    n_patients: int,
    at_risk_auc: float,
    replicates: int,
    seed: int,
    record_rank: NDArray[np.intp] | None,
) -> tuple[FloatArray, FloatArray]:
    """Null maximum patient AUC and at-risk count for each permutation replicate.

    Record i draws the random keys of position ``record_rank[i]``, so the same records
    get the same permutations whatever order they come in.
    """
    rng = np.random.default_rng(seed)
    n_models, n_records = masks.shape
    columns = np.arange(n_records)[None, :]
    maxima, counts = np.empty(replicates), np.empty(replicates)
    for r in range(replicates):
        keys = rng.random((n_models, n_records))
        if record_rank is not None:
            keys = keys[:, record_rank]
        order = np.argsort(keys, axis=0)
        permuted = masks[order, columns]
        m = record_moments(scores, permuted)
        auc = binormal_auc(m.mu_in, m.sd_in, m.mu_out, m.sd_out)
        patient_auc = np.full(n_patients, 0.5)
        np.maximum.at(patient_auc, patient_index, auc)
        maxima[r] = patient_auc.max()
        counts[r] = np.count_nonzero(patient_auc > at_risk_auc)
    return maxima, counts


def compute_noise_floor(
    scores: NDArray[np.floating[Any]],
    masks: NDArray[np.bool_],
    patient_index: NDArray[np.intp],
    n_patients: int,
    *,
    at_risk_auc: float,
    limit: float | None,
    replicates: int,
    seed: int,
    method: NullMethod | None = None,
    record_rank: NDArray[np.intp] | None = None,
) -> NoiseFloor:
    """The noise floor of an audit (permutation when affordable, else analytic).

    Args:
        scores: ``(n_reference_models, n_records)``.
        masks: ``(n_reference_models, n_records)``.
        patient_index: ``(n_records,)``.
        limit: the lowest patient-level AUC limit of the policy (None if it has none).
        record_rank: ``(n_records,)`` a canonical position per record (e.g. the rank of
            its id) that makes the permutation null independent of the input order.
    """
    n_models, n_records = scores.shape
    if method is None:
        affordable = replicates * n_models * n_records <= PERMUTATION_BUDGET
        method = NullMethod.PERMUTATION if affordable else NullMethod.ANALYTIC
    n_in = masks.sum(axis=0, dtype=np.int64)
    n_out = n_models - n_in
    if method is NullMethod.PERMUTATION:
        maxima, counts = _permuted_null(
            scores, masks, patient_index, n_patients, at_risk_auc, replicates, seed, record_rank
        )
        q95 = float(np.quantile(maxima, NULL_QUANTILE))
        expected = float(counts.mean())
    else:
        q95 = analytic_null_max_quantile(n_in, n_out)
        expected = _analytic_expected_at_risk(n_in, n_out, patient_index, n_patients, at_risk_auc)
    return NoiseFloor(
        method=method,
        replicates=replicates if method is NullMethod.PERMUTATION else None,
        max_patient_auc_q95=q95,
        expected_at_risk=expected,
        reference_models_needed=None
        if limit is None
        else reference_models_needed(n_records, limit),
        limit=limit,
    )
