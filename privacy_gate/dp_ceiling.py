"""What differential privacy guarantees about an attack's AUC, and what the gate asks of it.

docs/statistics.md, "DP ceiling" and "Recommendation". A DP-SGD run with privacy profile
``delta(eps)`` admits a trade-off curve ``f`` (Dong, Roth and Su 2019): no test between
"record in" and "record out" has a type-II error below ``f(type-I error)``, so no
membership attack (and no record AUC measured by the audit) can exceed the AUC ceiling
``1 - integral_0^1 f``. The privacy profile itself comes from an accountant (Opacus' PRV
accountant, at the edge in :mod:`privacy_gate.dp`); this module holds the accountant-free
math: the trade-off envelope, the mu-GDP cross-check, group privacy for patients with
several records, and the target the gate's own limit implies.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from privacy_gate.errors import InputError
from privacy_gate.record_stats import hanley_mcneil_se

__all__ = [
    "auc_for_mu",
    "gdp_auc_ceiling",
    "gdp_mu",
    "group_auc",
    "mu_for_auc",
    "records_above_ceiling",
    "target_mu",
    "tradeoff_auc_ceiling",
]

FloatArray = NDArray[np.float64]

ALPHA_GRID_POINTS = 4097
"""Type-I error grid of the trade-off integral; the right Riemann sum over it bounds
``integral f`` from below (``f`` is non-increasing), so the ceiling errs on the safe side
by at most ``1 / (ALPHA_GRID_POINTS - 1)``."""


def mu_for_auc(auc: float) -> float:
    """Gaussian-DP parameter whose trade-off curve has this AUC: ``sqrt(2) Phi^-1(auc)``.

    >>> round(mu_for_auc(0.5), 12)
    0.0
    """
    if not 0.5 <= auc < 1.0:
        raise InputError(f"An AUC ceiling must lie in [0.5, 1). Got {auc!r} instead.")
    return float(math.sqrt(2.0) * special.ndtri(auc))


def auc_for_mu(mu: float) -> float:
    """AUC of the mu-GDP trade-off curve, ``Phi(mu / sqrt(2))``.

    >>> round(auc_for_mu(mu_for_auc(0.9)), 12)
    0.9
    """
    return float(special.ndtr(mu / math.sqrt(2.0)))


def gdp_mu(noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """The CLT mu-GDP approximation of Poisson-subsampled DP-SGD (Bu et al. 2020),
    ``q sqrt(T) sqrt(exp(1/sigma^2) - 1)``; a quick check only (it can under-estimate).

    >>> round(gdp_mu(1.0, 0.01, 10_000), 4)
    1.3108
    """
    if noise_multiplier <= 0:
        return math.inf
    return float(sample_rate * math.sqrt(steps) * math.sqrt(math.expm1(noise_multiplier**-2)))


def gdp_auc_ceiling(noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """Record AUC ceiling under the mu-GDP approximation, ``Phi(mu / sqrt(2))``."""
    return auc_for_mu(gdp_mu(noise_multiplier, sample_rate, steps))


def group_auc(record_auc: float, records: int) -> float:
    """AUC ceiling for a patient whose ``records`` records enter or leave together.

    Group privacy of mu-GDP: ``k`` records give ``k * mu``. For a ceiling from another
    accountant, ``mu`` is the GDP parameter with the same AUC (exact when the trade-off
    curve is Gaussian, which the CLT makes it for many DP-SGD steps).

    >>> round(group_auc(0.76, 1), 12)
    0.76
    """
    if records < 1:
        raise InputError(f"A patient has at least one record. Got {records!r} instead.")
    return auc_for_mu(records * mu_for_auc(record_auc))


def target_mu(auc_limit: float, max_records_per_patient: int) -> float:
    """Per-record mu that keeps the patient with the most records at ``auc_limit``.

    ``mu* = sqrt(2) Phi^-1(T)`` divided by the largest number of records per patient.

    >>> round(target_mu(0.9, 2), 4)
    0.9062
    """
    if max_records_per_patient < 1:
        raise InputError(
            f"max_records_per_patient must be >= 1. Got {max_records_per_patient!r} instead."
        )
    return mu_for_auc(auc_limit) / max_records_per_patient


def tradeoff_auc_ceiling(epsilons: ArrayLike, deltas: ArrayLike) -> float:
    """AUC ceiling of the trade-off curve implied by a privacy profile.

    ``f(a) = max_i max(0, 1 - delta_i - e^eps_i a, e^-eps_i (1 - delta_i - a))`` over
    the given ``(eps_i, delta_i)`` points (each a valid (eps, delta)-DP guarantee, eps
    >= 0); fewer points give a smaller ``f``, hence a higher, still valid, ceiling.

    Args:
        epsilons: ``(n,)`` epsilons >= 0.
        deltas: ``(n,)`` the delta of each epsilon, in [0, 1].

    Returns:
        ``1 - integral_0^1 f``, in [0.5, 1].

    >>> round(tradeoff_auc_ceiling([0.0], [0.0]), 3)  # perfect privacy: f(a) = 1 - a
    0.5
    """
    eps = np.asarray(epsilons, dtype=np.float64).ravel()
    delta = np.asarray(deltas, dtype=np.float64).ravel()
    if eps.shape != delta.shape or eps.size == 0:
        raise InputError(
            f"A privacy profile needs as many deltas as epsilons, at least one. Got "
            f"{eps.size} epsilons and {delta.size} deltas instead."
        )
    if not (np.all(eps >= 0) and np.all((delta >= 0) & (delta <= 1))):
        raise InputError("A privacy profile needs epsilons >= 0 and deltas in [0, 1].")
    alpha = np.linspace(0.0, 1.0, ALPHA_GRID_POINTS)
    f = np.zeros_like(alpha)
    for start in range(0, eps.size, 256):  # bounded memory for long profiles
        e = np.minimum(eps[start : start + 256, None], 700.0)
        d = delta[start : start + 256, None]
        first = 1.0 - d - np.exp(e) * alpha[None, :]
        second = np.exp(-e) * (1.0 - d - alpha[None, :])
        f = np.maximum(f, np.maximum(first, second).max(axis=0))
    f = np.clip(f, 0.0, 1.0)
    integral_lower = float(f[1:].sum() / (ALPHA_GRID_POINTS - 1))  # right Riemann sum
    return float(min(1.0, max(0.5, 1.0 - integral_lower)))


def records_above_ceiling(
    auc: ArrayLike,
    n_in: ArrayLike,
    n_out: ArrayLike,
    ceiling: float,
    *,
    alpha: float = 0.05,
) -> NDArray[np.intp]:
    """Indices of records whose AUC is confidently above the DP ceiling.

    One-sided score test per record of "true AUC <= ceiling": ``(auc - ceiling) / se0 >
    Phi^-1(1 - alpha / n)``, with ``se0`` the Hanley-McNeil standard error at the ceiling
    (the null value: the SE at the estimate collapses to 0 when a few IN and OUT scores
    happen to separate perfectly, which the test must not take as certainty) and a
    Bonferroni correction over the ``n`` records, so that with correct DP training and
    accounting the chance that any record is listed is about ``alpha``. A listed record
    means broken accounting or a broken training loop.

    Args:
        auc: ``(n_records,)`` record AUCs.
        n_in, n_out: ``(n_records,)`` IN and OUT reference models of each record.

    >>> records_above_ceiling([0.999, 0.7], [32, 32], [32, 32], 0.8).tolist()
    [0]
    """
    values = np.asarray(auc, dtype=np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=np.intp)
    z = float(special.ndtri(1.0 - alpha / values.size))
    at_ceiling = np.full(values.shape, ceiling)
    se0 = hanley_mcneil_se(at_ceiling, np.asarray(n_in), np.asarray(n_out))
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(se0 > 0, (values - ceiling) / se0, np.inf * (values > ceiling))
    return np.flatnonzero(statistic > z).astype(np.intp)
