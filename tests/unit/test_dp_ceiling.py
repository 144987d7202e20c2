"""The accountant-free DP math against closed forms and independent integrations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from privacy_gate.dp_ceiling import (
    auc_for_mu,
    gdp_auc_ceiling,
    gdp_mu,
    group_auc,
    mu_for_auc,
    records_above_ceiling,
    target_mu,
    tradeoff_auc_ceiling,
)
from privacy_gate.errors import InputError
from privacy_gate.record_stats import hanley_mcneil_se


def gaussian_profile(mu: float, eps: np.ndarray) -> np.ndarray:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity/sigma = mu."""
    return stats.norm.cdf(-eps / mu + mu / 2) - np.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)


@pytest.mark.parametrize("mu", [0.25, 1.0, 2.0, 3.0])
def test_gaussian_profile_gives_the_gaussian_auc(mu: float) -> None:
    """The trade-off envelope of the exact Gaussian profile is G_mu, whose AUC is
    Phi(mu / sqrt 2); the ceiling may only err upwards (safe side), by the grid step."""
    eps = np.linspace(0.0, 30.0, 6000)
    ceiling = tradeoff_auc_ceiling(eps, gaussian_profile(mu, eps))
    exact = stats.norm.cdf(mu / math.sqrt(2))
    assert exact - 1e-9 <= ceiling <= exact + 5e-4


@pytest.mark.parametrize("eps", [0.1, 1.0, 3.0])
def test_pure_dp_ceiling_matches_numerical_integration(eps: float) -> None:
    """(eps, 0)-DP: f(a) = max(0, 1 - e^eps a, e^-eps (1 - a)); AUC = 1 - integral f."""

    def f(a: float) -> float:
        return max(0.0, 1 - math.exp(eps) * a, math.exp(-eps) * (1 - a))

    knee = 1.0 / (1.0 + math.exp(eps))
    integral = integrate.quad(f, 0, knee)[0] + integrate.quad(f, knee, 1)[0]
    ceiling = tradeoff_auc_ceiling([eps], [0.0])
    assert 1 - integral - 1e-9 <= ceiling <= 1 - integral + 5e-4


def test_no_privacy_and_perfect_privacy() -> None:
    assert tradeoff_auc_ceiling([0.0], [1.0]) == 1.0  # delta = 1: anything goes
    assert tradeoff_auc_ceiling([0.0], [0.0]) == pytest.approx(0.5, abs=5e-4)


def test_fewer_profile_points_never_lower_the_ceiling() -> None:
    eps = np.linspace(0.0, 20.0, 400)
    delta = gaussian_profile(1.5, eps)
    full = tradeoff_auc_ceiling(eps, delta)
    assert tradeoff_auc_ceiling(eps[::7], delta[::7]) >= full - 1e-12


def test_profile_validation() -> None:
    with pytest.raises(InputError, match="as many deltas"):
        tradeoff_auc_ceiling([0.1, 0.2], [0.1])
    with pytest.raises(InputError, match="epsilons >= 0"):
        tradeoff_auc_ceiling([-1.0], [0.1])


def test_gdp_mu_closed_form() -> None:
    """Bu et al. (2020): mu = q sqrt(T) sqrt(e^(1/sigma^2) - 1)."""
    q, steps, sigma = 0.01, 10_000, 1.0
    assert gdp_mu(sigma, q, steps) == pytest.approx(q * 100 * math.sqrt(math.e - 1))
    assert gdp_auc_ceiling(sigma, q, steps) == pytest.approx(
        stats.norm.cdf(gdp_mu(sigma, q, steps) / math.sqrt(2))
    )


@given(st.floats(0.5001, 0.9999), st.integers(1, 6))
@settings(max_examples=50, deadline=None)
def test_group_auc_is_phi_of_k_times_probit(auc: float, k: int) -> None:
    """k records: mu -> k mu, i.e. AUC -> Phi(k Phi^-1(auc)); monotone in k."""
    assert group_auc(auc, k) == pytest.approx(stats.norm.cdf(k * stats.norm.ppf(auc)), abs=1e-12)
    assert group_auc(auc, k + 1) >= group_auc(auc, k)


def test_target_mu_undoes_group_privacy() -> None:
    """The per-record target keeps the largest patient exactly at the limit."""
    for limit, k in ((0.9, 1), (0.95, 3), (0.7, 2)):
        mu = target_mu(limit, k)
        assert mu == pytest.approx(math.sqrt(2) * stats.norm.ppf(limit) / k)
        assert group_auc(auc_for_mu(mu), k) == pytest.approx(limit)
    assert mu_for_auc(auc_for_mu(1.3)) == pytest.approx(1.3)
    with pytest.raises(InputError):
        target_mu(0.9, 0)
    with pytest.raises(InputError):
        mu_for_auc(1.0)


def test_records_above_ceiling_is_a_bonferroni_score_test() -> None:
    ceiling, n_in, n_out = 0.8, np.array([32, 32, 32]), np.array([32, 32, 32])
    se0 = float(hanley_mcneil_se(np.array([ceiling]), n_in[:1], n_out[:1])[0])
    z = stats.norm.ppf(1 - 0.05 / 3)
    auc = np.array([ceiling + (z + 0.01) * se0, ceiling + (z - 0.01) * se0, 0.6])
    assert records_above_ceiling(auc, n_in, n_out, ceiling).tolist() == [0]
    assert records_above_ceiling(np.array([]), n_in[:0], n_out[:0], ceiling).size == 0


def test_records_above_ceiling_is_calibrated_at_the_null() -> None:
    """AUCs drawn at the ceiling (true AUC = ceiling): few listed, about alpha of runs."""
    rng = np.random.default_rng(0)
    ceiling, n = 0.75, 2000
    n_in = np.full(n, 32)
    se0 = hanley_mcneil_se(np.full(n, ceiling), n_in, n_in)
    runs = [
        records_above_ceiling(ceiling + rng.normal(size=n) * se0, n_in, n_in, ceiling).size
        for _ in range(200)
    ]
    assert np.mean(np.array(runs) > 0) <= 0.1
