"""Empirical-Bayes shrinkage of per-record IN/OUT variances (``risk.variance: shrunk``).

With K/2 scores per side, a record's sample variance is noisy, and the record AUC
``Phi((mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2))`` inherits that noise: a record whose
variances happen to come out small looks exposed. Across thousands of records the
variances share a distribution, so each can borrow strength from the others (Smyth
2004, limma's ``fitFDist`` and ``squeezeVar``):

- the sample variances ``s2_i`` (unbiased, ``d_i = n_i - 1`` degrees of freedom) are
  modelled as ``s2_i ~ s0^2 chi2(d_i) / d_i`` given ``sigma_i^2``, and
  ``1 / sigma_i^2 ~ chi2(d0) / (d0 s0^2)`` a priori;
- ``d0`` and ``s0^2`` are fitted by moments of ``log s2_i`` (digamma/trigamma), as in
  ``fitFDist`` (global prior, not trended);
- the posterior variance is ``(d0 s0^2 + d_i s2_i) / (d0 + d_i)``.

IN and OUT variances get separate priors: membership changes the spread of the IN
scores. Only the AUC point estimates use the shrunk variances, and only where they do not
lower a record's AUC (`never_lower`); the at-risk test keeps the plain sample variances,
whose noncentral-t law holds its size (`privacy_gate.at_risk`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy import special

from privacy_gate.record_stats import SD_FLOOR, RecordMoments, binormal_auc, plain_auc

__all__ = [
    "VariancePrior",
    "auc_estimator",
    "fit_f_dist",
    "never_lower",
    "shrink_moments",
    "trigamma_inverse",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class VariancePrior:
    """The fitted scaled-inverse-chi-square prior: ``d0`` degrees of freedom (inf: every
    variance is the same) and scale ``s0^2``."""

    df: float
    scale: float


def trigamma_inverse(x: float) -> float:
    """``y`` with ``trigamma(y) = x`` (limma's Newton iteration, from ``0.5 + 1/x``).

    >>> round(float(special.polygamma(1, trigamma_inverse(0.3))), 12)
    0.3
    """
    if x > 1e7:
        return 1.0 / math.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        step = tri * (1.0 - tri / x) / float(special.polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def fit_f_dist(s2: FloatArray, df: FloatArray) -> VariancePrior | None:
    """limma's ``fitFDist`` (no covariate): the prior of the true variances from sample
    variances ``s2`` with ``df`` degrees of freedom. Only finite ``s2 > 0`` with
    ``df >= 1`` enter the fit; None when fewer than three do."""
    usable = np.isfinite(s2) & (s2 > 0) & np.isfinite(df) & (df >= 1)
    if np.count_nonzero(usable) < 3:
        return None
    z = np.log(s2[usable])
    half = df[usable] / 2.0
    e = z - special.digamma(half) + np.log(half)
    n = len(e)
    mean = float(e.mean())
    excess = float(np.sum((e - mean) ** 2) / (n - 1) - np.mean(special.polygamma(1, half)))
    if excess > 0:
        d0 = 2.0 * trigamma_inverse(excess)
        return VariancePrior(d0, math.exp(mean + special.digamma(d0 / 2.0) - math.log(d0 / 2.0)))
    return VariancePrior(math.inf, math.exp(mean))


def _posterior(s2: FloatArray, df: FloatArray, prior: VariancePrior | None) -> FloatArray:
    if prior is None:
        return s2
    if math.isinf(prior.df):
        return np.full_like(s2, prior.scale)
    with np.errstate(invalid="ignore"):
        post = (prior.df * prior.scale + df * s2) / (prior.df + df)
    return np.where(df >= 1, post, s2)


def _shrink_side(sd: FloatArray, n: NDArray[np.int64]) -> FloatArray:
    """Posterior standard deviations of one side, on the moments' ddof=0 scale."""
    n_f = n.astype(np.float64)
    df = n_f - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        s2 = sd**2 * n_f / df  # unbiased
        fit_s2 = np.where(sd != SD_FLOOR, s2, np.nan)  # floored (constant) sets carry none
        post = _posterior(s2, df, fit_f_dist(fit_s2, df))
        shrunk = np.sqrt(post * df / n_f)
    return np.asarray(np.where(n >= 2, shrunk, sd), dtype=np.float64)


def shrink_moments(moments: RecordMoments) -> RecordMoments:
    """The moments with posterior IN and OUT standard deviations (means and counts kept)."""
    return replace(
        moments,
        sd_in=_shrink_side(moments.sd_in, moments.n_in),
        sd_out=_shrink_side(moments.sd_out, moments.n_out),
    )


def never_lower(moments: RecordMoments) -> RecordMoments:
    """The moments the gate reads with ``variance: shrunk``: per record, the posterior
    standard deviations where they do not lower its AUC, the sample ones where they would.

    Shrinking pulls a record's small variances up towards the bulk's, and so pulls down the
    AUC of exactly the record that leaks with little spread (measured: a record at true AUC
    0.97 with half the bulk's SDs crossed 0.95 in 18% of draws shrunk, 87.5% plain). The
    gate's point estimates must never be lowered by the estimator, so each record's AUC is
    ``max(plain, shrunk)``; shrinkage still lowers the noise floor it is compared with."""
    shrunk = shrink_moments(moments)
    keep = binormal_auc(shrunk.mu_in, shrunk.sd_in, shrunk.mu_out, shrunk.sd_out) >= plain_auc(
        moments
    )
    return replace(
        moments,
        sd_in=np.where(keep, shrunk.sd_in, moments.sd_in),
        sd_out=np.where(keep, shrunk.sd_out, moments.sd_out),
    )


def _shrunk_auc(m: RecordMoments) -> FloatArray:
    s = never_lower(m)
    return binormal_auc(s.mu_in, s.sd_in, s.mu_out, s.sd_out)


def auc_estimator(shrunk: bool) -> Callable[[RecordMoments], FloatArray]:
    """The record-AUC estimator from moments: plain, or with shrunk variances where they do
    not lower it (`never_lower`). The audit applies the same one to the null replicates,
    so the noise floor matches it."""
    return _shrunk_auc if shrunk else plain_auc
