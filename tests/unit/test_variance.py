"""Empirical-Bayes variance shrinkage against its closed forms and simulated priors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from privacy_gate.config import NullChoice, parse_config
from privacy_gate.errors import InputError
from privacy_gate.noise_floor import NullMethod, compute_noise_floor
from privacy_gate.pipeline import audit
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.record_stats import SD_FLOOR, binormal_auc, record_moments
from privacy_gate.records import records_from_columns
from privacy_gate.signals import make_signals
from privacy_gate.variance import (
    VariancePrior,
    auc_estimator,
    fit_f_dist,
    shrink_moments,
    trigamma_inverse,
)


@pytest.mark.parametrize("x", [1e-4, 0.05, 0.3, 1.0, 10.0, 1e3])
def test_trigamma_inverse_inverts_trigamma(x: float) -> None:
    assert float(special.polygamma(1, trigamma_inverse(x))) == pytest.approx(x, rel=1e-6)


@pytest.mark.parametrize(("d0", "s0", "df"), [(8.0, 2.0, 7), (4.0, 0.5, 15), (30.0, 1.0, 31)])
def test_fit_f_dist_recovers_a_known_prior(d0: float, s0: float, df: int) -> None:
    # sigma^2 ~ scaled inverse chi-square(d0, s0), s2 | sigma^2 ~ sigma^2 chi2(df) / df.
    rng = np.random.default_rng(int(d0))
    n = 40_000
    sigma2 = d0 * s0 / rng.chisquare(d0, n)
    s2 = sigma2 * rng.chisquare(df, n) / df
    prior = fit_f_dist(s2, np.full(n, float(df)))
    assert prior is not None
    assert prior.df == pytest.approx(d0, rel=0.15)
    assert prior.scale == pytest.approx(s0, rel=0.05)


def test_fit_f_dist_equal_variances_give_a_point_prior() -> None:
    # All true variances equal: s2 ~ chi2(df)/df exactly; d0 is infinite (or huge).
    rng = np.random.default_rng(3)
    s2 = 1.7 * rng.chisquare(7, 50_000) / 7
    prior = fit_f_dist(s2, np.full(50_000, 7.0))
    assert prior is not None
    assert prior.df > 200
    assert prior.scale == pytest.approx(1.7, rel=0.02)


def test_fit_f_dist_moments_by_hand() -> None:
    s2 = np.array([0.5, 1.0, 2.0, 4.0, 0.8, 1.3])
    df = np.array([3.0, 3.0, 5.0, 5.0, 7.0, 7.0])
    e = np.log(s2) - special.digamma(df / 2) + np.log(df / 2)
    excess = np.var(e, ddof=1) - np.mean(special.polygamma(1, df / 2))
    prior = fit_f_dist(s2, df)
    assert prior is not None
    if excess > 0:
        d0 = 2 * trigamma_inverse(excess)
        assert prior.df == pytest.approx(d0)
        assert prior.scale == pytest.approx(
            math.exp(e.mean() + special.digamma(d0 / 2) - math.log(d0 / 2))
        )
    else:
        assert math.isinf(prior.df) and prior.scale == pytest.approx(math.exp(e.mean()))
    assert fit_f_dist(s2[:2], df[:2]) is None  # too few to fit


def test_shrink_moments_is_the_posterior_variance_per_side() -> None:
    rng = np.random.default_rng(4)
    k, n = 16, 3000
    masks = np.argsort(rng.random((k, n)), axis=0) < 6  # 6 IN, 10 OUT
    scores = rng.standard_normal((k, n)) * rng.gamma(4.0, 0.25, n)
    plain = record_moments(scores, masks)
    shrunk = shrink_moments(plain)
    np.testing.assert_array_equal(shrunk.mu_in, plain.mu_in)
    np.testing.assert_array_equal(shrunk.n_out, plain.n_out)
    for sd, n_side, got in ((plain.sd_in, 6, shrunk.sd_in), (plain.sd_out, 10, shrunk.sd_out)):
        s2 = sd**2 * n_side / (n_side - 1)
        prior = fit_f_dist(s2, np.full(n, n_side - 1.0))
        assert isinstance(prior, VariancePrior) and math.isfinite(prior.df)
        post = (prior.df * prior.scale + (n_side - 1) * s2) / (prior.df + n_side - 1)
        np.testing.assert_allclose(got, np.sqrt(post * (n_side - 1) / n_side), rtol=1e-12)
        # Shrinkage pulls the spread of the variances in: smaller range, same centre.
        assert np.std(np.log(got)) < np.std(np.log(sd))


def test_constant_and_single_score_sides_are_left_alone() -> None:
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((8, 50))
    masks = np.argsort(rng.random((8, 50)), axis=0) < 4
    scores[:, 0] = 3.0  # constant record: SD_FLOOR on both sides
    masks[:, 1] = np.arange(8) < 1  # one IN score only
    plain = record_moments(scores, masks)
    shrunk = shrink_moments(plain)
    assert shrunk.sd_in[1] == plain.sd_in[1]
    assert plain.sd_in[0] == SD_FLOOR and shrunk.sd_in[0] > SD_FLOOR  # borrows the prior
    assert (
        binormal_auc(shrunk.mu_in[:1], shrunk.sd_in[:1], shrunk.mu_out[:1], shrunk.sd_out[:1])[0]
        == 0.5
    )


def _signals_and_records(k: int = 16, n: int = 800) -> tuple[object, object]:
    rng = np.random.default_rng(6)
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    scores = rng.standard_normal((k, n)) + masks * np.r_[np.full(20, 2.0), np.zeros(n - 20)]
    records = records_from_columns([f"r{i}" for i in range(n)], [f"p{i}" for i in range(n)], {})
    return make_signals(scores, masks), records


def test_audit_with_shrunk_variances_uses_them_for_auc_and_null_alike() -> None:
    signals, records = _signals_and_records()
    policy = {"risk": {"null_replicates": 40}, "gate": {"max_patient_auc": 0.99}}
    plain = audit(signals, records, parse_config(policy), pseudonymizer=Pseudonymizer(key=b"k"))
    shrunk_policy = {**policy, "risk": {**policy["risk"], "variance": "shrunk"}}
    shrunk = audit(
        signals, records, parse_config(shrunk_policy), pseudonymizer=Pseudonymizer(key=b"k")
    )
    expected = auc_estimator(True)(record_moments(signals.scores, signals.masks))
    np.testing.assert_allclose(shrunk.records.auc, expected, rtol=1e-12)
    assert not np.allclose(shrunk.records.auc, plain.records.auc)
    # The at-risk test keeps the plain moments: identical p-values.
    assert (
        shrunk.report.to_dict()["summary"]["at_risk_p_values"]
        == plain.report.to_dict()["summary"]["at_risk_p_values"]
    )
    assert shrunk.report.to_dict()["audit"]["config"]["risk"]["variance"] == "shrunk"
    assert shrunk.report.to_dict()["summary"]["noise_floor"]["method"] == "permutation"


def test_analytic_null_is_refused_and_never_chosen_with_shrunk_variances() -> None:
    signals, _ = _signals_and_records(n=200)
    index = np.arange(200, dtype=np.intp)
    common = {"at_risk_auc": 0.9, "limit": None, "seed": 0, "auc_of": auc_estimator(True)}
    with pytest.raises(InputError, match=r"risk\.variance is 'shrunk'"):
        compute_noise_floor(
            signals.scores,
            signals.masks,
            index,
            200,
            replicates=20,
            choice=NullChoice.ANALYTIC,
            **common,
        )
    ticks = iter(range(10**6))
    floor = compute_noise_floor(
        signals.scores,
        signals.masks,
        index,
        200,
        replicates=1000,
        time_budget_s=25.0,
        clock=lambda: float(next(ticks)),
        **common,
    )
    assert floor.method is NullMethod.PERMUTATION and floor.replicates is not None
    assert floor.replicates < 1000  # the budget stopped it, analytic was not an option


def test_shrinkage_never_hides_a_low_variance_leaker() -> None:
    """A record at true AUC 0.97 whose IN and OUT SDs are half the bulk's: shrinking its
    variances towards the bulk's would pull its AUC below 0.95 in most draws; the gate's
    estimate is max(plain, shrunk), so it crosses 0.95 at least as often as plain."""
    from scipy import stats as sstats

    rng = np.random.default_rng(11)
    k, n, reps = 64, 400, 200
    delta = float(sstats.norm.ppf(0.97)) * np.sqrt(2 * 0.5**2)  # AUC 0.97 at SD 0.5
    crossed_gate = crossed_plain = crossed_posterior = 0
    for _ in range(reps):
        masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
        scores = rng.standard_normal((k, n))
        scores[:, 0] = 0.5 * rng.standard_normal(k) + masks[:, 0] * delta
        moments = record_moments(scores, masks)
        gate = auc_estimator(True)(moments)[0]
        plain = auc_estimator(False)(moments)[0]
        s = shrink_moments(moments)
        posterior = binormal_auc(s.mu_in[:1], s.sd_in[:1], s.mu_out[:1], s.sd_out[:1])[0]
        assert gate >= plain and gate >= posterior
        crossed_gate += gate > 0.95
        crossed_plain += plain > 0.95
        crossed_posterior += posterior > 0.95
    assert crossed_posterior / reps < 0.5  # the plain posterior would hide it ...
    assert crossed_gate >= crossed_plain and crossed_gate / reps > 0.8  # ... the gate does not
