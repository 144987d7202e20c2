"""Privacy accounting of DP-SGD with Opacus' PRV accountant, turned into AUC ceilings.

The edge half of "DP ceiling" (docs/statistics.md): Opacus composes the Poisson-subsampled
Gaussian privacy loss over all steps (Gopi et al. 2021); this module reads the composed
privacy loss distribution as a privacy profile ``delta(eps)`` with error bounds and hands
it to :func:`privacy_gate.dp_ceiling.tradeoff_auc_ceiling`. Opacus' ``gdp`` accountant is
never used (it crashes inside ``get_noise_multiplier``); searches bisect on sigma here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from privacy_gate.dp_ceiling import tradeoff_auc_ceiling
from privacy_gate.errors import InputError

__all__ = ["PrivacyProfile", "auc_ceiling", "epsilon", "history_epsilon", "privacy_profile"]

EPS_ERROR = 0.01
"""Accountant's epsilon discretisation error (Opacus' default)."""
DELTA_ERROR = 1e-7
"""Accountant's delta error; it adds at most this much to an AUC ceiling."""
PROFILE_POINTS = 4000
"""Epsilons of the profile kept for the trade-off envelope (any subset is valid)."""


def _import_prv() -> object:
    try:
        from opacus.accountants.analysis import prv
    except ImportError:
        raise InputError(
            "DP-SGD accounting needs Opacus. HINT: pip install 'privacy-gate[opacus]'."
        ) from None
    return prv


def _check(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (isinstance(noise_multiplier, (int, float)) and 0 < noise_multiplier < math.inf):
        raise InputError(
            f"The 'noise_multiplier' of DP-SGD must be a number > 0. Got {noise_multiplier!r} "
            "instead."
        )
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise InputError(
            f"The 'sample_rate' of DP-SGD must be in (0, 1] (batch_size / dataset size). "
            f"Got {sample_rate!r} instead."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"The 'steps' of DP-SGD must be an integer >= 1. Got {steps!r} instead.")


@dataclass(frozen=True)
class PrivacyProfile:
    """Upper bounds ``delta(eps)`` of the composed mechanism, ``(n,)`` each, eps >= 0."""

    epsilons: NDArray[np.float64]
    deltas: NDArray[np.float64]


def privacy_profile(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    *,
    eps_error: float = EPS_ERROR,
    delta_error: float = DELTA_ERROR,
) -> PrivacyProfile:
    """The privacy profile of ``steps`` Poisson-subsampled Gaussian steps, from Opacus' PRV
    composition, as guaranteed upper bounds.

    The composed discrete privacy loss gives an estimate ``delta_hat(eps)``; by Gopi et al.
    (2021, Thm 5.5) the true ``delta(eps + eps_error) <= delta_hat(eps) + delta_error``.
    """
    _check(noise_multiplier, sample_rate, steps)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # Opacus evaluates log(0) at the domain's edge and notes RDP orders it does not need
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return _privacy_profile(noise_multiplier, sample_rate, steps, eps_error, delta_error)


def _privacy_profile(
    noise_multiplier: float, sample_rate: float, steps: int, eps_error: float, delta_error: float
) -> PrivacyProfile:
    prv = _import_prv()
    mechanism = prv.PoissonSubsampledGaussianPRV(sample_rate, noise_multiplier)  # type: ignore[attr-defined]
    size = prv.compute_safe_domain_size(  # type: ignore[attr-defined]
        prvs=[mechanism],
        max_self_compositions=[steps],
        eps_error=eps_error,
        delta_error=delta_error,
    )
    mesh = eps_error / math.sqrt(steps * math.log(12 / delta_error) / 2)
    domain = prv.Domain.create_aligned(-size, size, mesh)  # type: ignore[attr-defined]
    truncated = prv.TruncatedPrivacyRandomVariable(mechanism, domain.t_min, domain.t_max)  # type: ignore[attr-defined]
    composed = prv.compose_heterogeneous(  # type: ignore[attr-defined]
        dprvs=[prv.discretize(truncated, domain)],  # type: ignore[attr-defined]
        num_self_compositions=[steps],
    )
    t = np.asarray(composed.domain.ts, dtype=np.float64)
    pmf = np.clip(np.asarray(composed.pmf, dtype=np.float64), 0.0, None)
    keep = t >= 0.0
    t, pmf = t[keep], pmf[keep]
    # delta_hat(t_i) = sum_{j >= i} p_j (1 - exp(t_i - t_j)); all exponents <= 0 here
    tail_mass = np.cumsum(pmf[::-1])[::-1]
    tail_scaled = np.cumsum((pmf * np.exp(-t))[::-1])[::-1]
    delta_hat = np.clip(tail_mass - np.exp(t) * tail_scaled, 0.0, 1.0)
    pick = np.unique(np.linspace(0, t.size - 1, min(t.size, PROFILE_POINTS)).astype(np.intp))
    return PrivacyProfile(
        epsilons=t[pick] + eps_error,
        deltas=np.minimum(1.0, delta_hat[pick] + delta_error),
    )


def auc_ceiling(noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """Record AUC ceiling of DP-SGD from the PRV privacy profile (Dong, Roth and Su 2019)."""
    profile = privacy_profile(noise_multiplier, sample_rate, steps)
    return tradeoff_auc_ceiling(profile.epsilons, profile.deltas)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, *, delta: float) -> float:
    """Epsilon at ``delta`` from Opacus' own ``PRVAccountant`` (its upper estimate)."""
    _check(noise_multiplier, sample_rate, steps)
    return history_epsilon([(noise_multiplier, sample_rate, steps)], delta=delta)


def history_epsilon(history: Sequence[tuple[float, float, int]], *, delta: float) -> float:
    """Epsilon at ``delta`` of a training history ``[(noise, sample_rate, steps), ...]``.

    Opacus' PRV accountant first; where its discretisation cannot cope (e.g. almost no
    noise), the looser RDP accountant; ``inf`` when neither can bound it.
    """
    if not 0 < delta < 1:
        raise InputError(f"The 'delta' of DP-SGD must be in (0, 1). Got {delta!r} instead.")
    if not history:
        return 0.0
    _import_prv()
    from opacus.accountants import PRVAccountant, RDPAccountant

    for kind in (PRVAccountant, RDPAccountant):
        accountant = kind()
        accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            try:
                value = float(accountant.get_epsilon(delta=delta))
            except (ValueError, RuntimeError, OverflowError, MemoryError):
                continue
        if math.isfinite(value):
            return value
    return math.inf
