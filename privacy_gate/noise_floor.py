"""The noise floor: how high patient AUCs get from estimation noise alone.

With few reference models a record that does not leak at all still gets a high record
AUC by chance, and the maximum over thousands of patients is far from 0.5. The null
distribution keeps every record's IN/OUT counts and removes any membership effect:

- ``permutation`` (the definition, distribution-free): permute each record's IN/OUT
  labels across the reference models and recompute, ``replicates`` times, within a time
  budget that the report states;
- ``analytic``: under a Gaussian null with equal variances and BALANCED counts
  (``n_in == n_out`` for every record) the binormal statistic
  ``d = (mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2)`` (ddof=0) is exactly a scaled
  Student t: ``d = t * c``, ``t ~ t(n_in + n_out - 2)``,
  ``c = sqrt((1/n_in + 1/n_out) / ((n_in - 1)/n_in + (n_out - 1)/n_out))``; records are
  independent, so the null maximum has CDF ``prod_i F_i``. With unbalanced counts the
  denominator is not a pooled variance and the t law is only approximate, so the
  analytic null is never used there, nor with ``risk.variance: shrunk`` (the t law is
  that of the plain estimator).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from privacy_gate.errors import InputError
from privacy_gate.record_stats import (
    RecordMoments,
    binormal_auc,
    masked_moments_exact,
    plain_auc,
)
from privacy_gate.risk_config import NullChoice

__all__ = [
    "MIN_REPLICATES",
    "NoiseFloor",
    "NullMethod",
    "analytic_null_max_quantile",
    "compute_noise_floor",
    "reference_models_needed",
]

MIN_REPLICATES = 20
"""The fewest permutation replicates an audit runs, whatever its time budget: a 95th
percentile needs at least this many draws to mean anything."""

MAX_REFERENCE_MODELS_SEARCHED = 4096
NULL_QUANTILE = 0.95

FloatArray = NDArray[np.float64]


class NullMethod(str, Enum):
    PERMUTATION = "permutation"
    ANALYTIC = "analytic"


@dataclass(frozen=True)
class NoiseFloor:
    """Null figures reported beside every patient-level figure.

    No wall time is kept: a rerun's report must equal the first, so the budget and the
    replicates run are stated instead.

    Attributes:
        method: how the null was computed.
        reason: why that method (the configured choice, the budget, the counts).
        balanced: every record has ``n_in == n_out`` (where the analytic null is exact).
        replicates: permutation replicates run (None for the analytic null).
        replicates_requested: ``risk.null_replicates``.
        time_budget_s: ``risk.null_time_budget_s``.
        max_patient_auc_q95: 95th percentile of the null maximum patient AUC.
        expected_at_risk: null expected number of patients with AUC > ``at_risk_auc``.
        reference_models_needed: smallest even K whose floor is below ``limit`` for this
            many records (None without a limit, or beyond the search range).
        limit: the lowest patient-level AUC limit of the policy, if any.
    """

    method: NullMethod
    reason: str
    balanced: bool
    replicates: int | None
    replicates_requested: int
    time_budget_s: float
    max_patient_auc_q95: float
    expected_at_risk: float
    reference_models_needed: int | None
    limit: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method.value,
            "reason": self.reason,
            "balanced": self.balanced,
            "replicates": self.replicates,
            "replicates_requested": self.replicates_requested,
            "time_budget_s": self.time_budget_s,
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


@functools.lru_cache(maxsize=256)
def reference_models_needed(
    n_records: int, limit: float, quantile: float = NULL_QUANTILE
) -> int | None:
    """Smallest even K (each record IN for K/2) whose null-max quantile is below ``limit``
    (cached: every power rule of a gate asks for it).

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


AucOfMoments = Callable[[RecordMoments], FloatArray]
"""The record-AUC estimator the audit uses, applied to null moments alike."""


def _patient_max(
    auc: FloatArray, order: NDArray[np.intp] | None, starts: NDArray[np.intp]
) -> FloatArray:
    """Per-patient maximum of record AUCs (records sorted by patient once, by the caller)."""
    if order is None:
        return auc
    return np.asarray(np.maximum.reduceat(auc[order], starts), dtype=np.float64)


class _Permuter:
    """Permutation replicates of the null, vectorised over records.

    The records of one patient share one permutation of the models (the keys of their
    patient's first position by ``record_rank``): a patient's records keep their masks
    together and their score correlation, as in the audit (docs/statistics.md). Records are taken
    in ``record_rank`` order, so the same records get the same permutations and the same
    floating-point sums in any input order.
    The IN/OUT moments of a replicate come from sums over the permuted IN set of the
    centred scores and their squares (the OUT sums are the totals minus the IN sums): two
    multiply-adds per score instead of a fresh two-pass moment computation.
    """

    def __init__(
        self,
        scores: NDArray[np.floating[Any]],
        masks: NDArray[np.bool_],
        patient_index: NDArray[np.intp],
        n_patients: int,
        seed: int,
        record_rank: NDArray[np.intp] | None,
        auc_of: AucOfMoments,
    ) -> None:
        if record_rank is not None:  # canonical order: the same sums in any input order
            canonical = np.argsort(record_rank, kind="stable")
            scores, masks = scores[:, canonical], masks[:, canonical]
            patient_index = patient_index[canonical]
        self.masks = masks
        self.n_models, self.n_records = masks.shape
        scores64 = np.asarray(scores, dtype=np.float64)
        self.scores = scores64
        self.centre = scores64.mean(axis=0)
        self.centred = scores64 - self.centre
        self.squared = self.centred * self.centred
        self.total = self.centred.sum(axis=0)
        self.total_sq = self.squared.sum(axis=0)
        self.n_in = masks.sum(axis=0, dtype=np.int64)
        self.n_out = self.n_models - self.n_in
        self.rng = np.random.default_rng(seed)
        first = np.full(n_patients, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, patient_index, np.arange(self.n_records))
        self.key_column = first[patient_index]
        self.columns = np.arange(self.n_records)[None, :]
        self.auc_of = auc_of
        if n_patients == self.n_records and np.array_equal(
            patient_index, np.arange(self.n_records)
        ):
            self.order: NDArray[np.intp] | None = None
            self.starts = np.zeros(0, dtype=np.intp)
        else:
            self.order = np.argsort(patient_index, kind="stable")
            self.starts = np.flatnonzero(np.r_[True, np.diff(patient_index[self.order]) != 0])

    def _moments(self, is_in: FloatArray) -> RecordMoments:
        s_in = np.einsum("ij,ij->j", is_in, self.centred)
        q_in = np.einsum("ij,ij->j", is_in, self.squared)
        with np.errstate(divide="ignore", invalid="ignore"):
            mu_in = s_in / self.n_in
            mu_out = (self.total - s_in) / self.n_out
            var_in = np.maximum(q_in / self.n_in - mu_in**2, 0.0)
            var_out = np.maximum((self.total_sq - q_in) / self.n_out - mu_out**2, 0.0)
        sd_in, sd_out = np.sqrt(var_in), np.sqrt(var_out)
        # A spread this small may be rounding noise of the one-pass sums, or real (scores
        # saturated near one value): recompute those columns as record_moments does, so the
        # null applies the audit's own estimator (SD_FLOOR only for exactly constant sets).
        tiny_in = ~(sd_in > 1e-9 * np.abs(mu_in + self.centre) + 1e-300)
        tiny_out = ~(sd_out > 1e-9 * np.abs(mu_out + self.centre) + 1e-300)
        mu_in, mu_out = mu_in + self.centre, mu_out + self.centre
        for tiny, selected, count, mu, sd in (
            (tiny_in, is_in > 0.5, self.n_in, mu_in, sd_in),
            (tiny_out, is_in < 0.5, self.n_out, mu_out, sd_out),
        ):
            columns = np.flatnonzero(tiny)
            if columns.size:
                with np.errstate(divide="ignore", invalid="ignore"):
                    mu[columns], sd[columns] = masked_moments_exact(
                        self.scores[:, columns], selected[:, columns], count[columns]
                    )
        return RecordMoments(mu_in, sd_in, mu_out, sd_out, self.n_in, self.n_out)

    def replicate(self, at_risk_auc: float) -> tuple[float, int, FloatArray]:
        """One replicate: the null maximum patient AUC, the null at-risk count and the
        null patient AUCs."""
        keys = self.rng.random((self.n_models, self.n_records))
        keys = keys[:, self.key_column]
        order = np.argsort(keys, axis=0)
        is_in = self.masks[order, self.columns].astype(np.float64)
        patient_auc = _patient_max(self.auc_of(self._moments(is_in)), self.order, self.starts)
        at_risk = int(np.count_nonzero(patient_auc > at_risk_auc))
        return float(patient_auc.max()), at_risk, patient_auc


def _analytic(
    n_in: NDArray[np.int64],
    n_out: NDArray[np.int64],
    patient_index: NDArray[np.intp],
    n_patients: int,
    at_risk_auc: float,
) -> tuple[float, float]:
    return (
        analytic_null_max_quantile(n_in, n_out),
        _analytic_expected_at_risk(n_in, n_out, patient_index, n_patients, at_risk_auc),
    )


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
    choice: NullChoice = NullChoice.AUTO,
    time_budget_s: float = 120.0,
    record_rank: NDArray[np.intp] | None = None,
    auc_of: AucOfMoments = plain_auc,
    clock: Callable[[], float] = time.perf_counter,
    on_replicate: Callable[[FloatArray], None] | None = None,
) -> NoiseFloor:
    """The noise floor of an audit.

    ``choice`` (``risk.null``):

    - ``permutation``: ``replicates`` replicates, stopping early when ``time_budget_s``
      runs out (never below `MIN_REPLICATES`); the report states how many ran;
    - ``analytic``: only for balanced counts, else an `InputError`;
    - ``auto``: permutation; if the first replicates show it would overrun the budget,
      the analytic null where the counts are balanced, else permutation within the
      budget. The reason is stated in the report.

    Args:
        scores: ``(n_reference_models, n_records)``.
        masks: ``(n_reference_models, n_records)``.
        patient_index: ``(n_records,)``.
        limit: the lowest patient-level AUC limit of the policy (None if it has none).
        record_rank: ``(n_records,)`` a canonical position per record (e.g. the rank of
            its id) that makes the permutation null independent of the input order.
        auc_of: the record-AUC estimator of the audit (`risk.variance`).
        clock: seconds, for the time budget.
        on_replicate: called with each permutation replicate's null patient AUCs
            (`privacy_gate.null_tail` counts the null tail from them).
    """
    started = clock()
    n_models, n_records = masks.shape
    n_in = masks.sum(axis=0, dtype=np.int64)
    n_out = n_models - n_in
    balanced = bool(np.array_equal(n_in, n_out))
    # The Student-t law is that of the plain estimator; shrunk variances have no closed form.
    exact = balanced and auc_of is plain_auc
    method, reason, done = NullMethod.PERMUTATION, "", 0
    maxima: list[float] = []
    counts: list[int] = []
    if choice is NullChoice.ANALYTIC:
        if auc_of is not plain_auc:
            raise InputError(
                "The 'null' parameter of risk is 'analytic', but risk.variance is 'shrunk': "
                "the analytic (Student-t) null is the law of the plain estimator only. "
                "HINT: set risk.null to 'auto' or 'permutation', or risk.variance to 'plain'."
            )
        if not balanced:
            unbalanced = int(np.count_nonzero(n_in != n_out))
            raise InputError(
                f"The 'null' parameter of risk is 'analytic', but {unbalanced} of {n_records} "
                "records are IN for a different number of reference models than OUT, where "
                "the analytic (Student-t) null is not exact. HINT: set risk.null to 'auto' "
                "or 'permutation'."
            )
        method, reason = NullMethod.ANALYTIC, "risk.null is 'analytic' (exact: balanced counts)"
    else:
        permuter = _Permuter(scores, masks, patient_index, n_patients, seed, record_rank, auc_of)
        while done < replicates:
            maximum, count, null_patient_auc = permuter.replicate(at_risk_auc)
            if on_replicate is not None:
                on_replicate(null_patient_auc)
            maxima.append(maximum)
            counts.append(count)
            done += 1
            spent = clock() - started
            projected = spent / done * replicates
            if choice is NullChoice.AUTO and exact and projected > time_budget_s:
                method = NullMethod.ANALYTIC
                reason = (
                    f"{replicates} permutation replicates would overrun the time budget of "
                    f"{time_budget_s:g} s (risk.null_time_budget_s); the analytic null is "
                    "exact for Gaussian scores with these balanced counts"
                )
                break
            if spent > time_budget_s and done >= MIN_REPLICATES and done < replicates:
                reason = (
                    f"the time budget of {time_budget_s:g} s (risk.null_time_budget_s) ran "
                    f"out after {done} of {replicates} replicates"
                )
                break
        if method is NullMethod.PERMUTATION and not reason:
            reason = f"{done} replicates within the time budget of {time_budget_s:g} s"
    if method is NullMethod.ANALYTIC:
        q95, expected = _analytic(n_in, n_out, patient_index, n_patients, at_risk_auc)
    else:
        q95 = float(np.quantile(np.asarray(maxima), NULL_QUANTILE))
        expected = float(np.mean(counts))
    return NoiseFloor(
        method=method,
        reason=reason,
        balanced=balanced,
        replicates=done if method is NullMethod.PERMUTATION else None,
        replicates_requested=replicates,
        time_budget_s=float(time_budget_s),
        max_patient_auc_q95=q95,
        expected_at_risk=expected,
        reference_models_needed=None
        if limit is None
        else reference_models_needed(n_records, limit),
        limit=limit,
    )
