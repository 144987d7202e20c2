"""The noise floor against Monte Carlo simulation of the null and docs/statistics.md's figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from privacy_gate.config import NullChoice
from privacy_gate.errors import InputError
from privacy_gate.noise_floor import (
    MIN_REPLICATES,
    NullMethod,
    analytic_null_max_quantile,
    compute_noise_floor,
    reference_models_needed,
)


def _balanced_masks(n_models: int, n_records: int, rng: np.random.Generator) -> np.ndarray:
    """Each record IN for exactly half of the models, as a plan draws them."""
    masks = np.zeros((n_models, n_records), bool)
    masks[: n_models // 2] = True
    return np.take_along_axis(masks, np.argsort(rng.random((n_models, n_records)), axis=0), axis=0)


def _simulated_null_max_auc(
    n_in: int, n_out: int, n_records: int, replicates: int, seed: int
) -> np.ndarray:
    """Max record AUC over ``n_records`` leak-free Gaussian records, per replicate."""
    rng = np.random.default_rng(seed)
    maxima = []
    batch = 250
    for _ in range(replicates // batch):
        s = rng.standard_normal((batch, n_in + n_out, n_records))
        s_in, s_out = s[:, :n_in], s[:, n_in:]
        d = (s_in.mean(axis=1) - s_out.mean(axis=1)) / np.sqrt(
            s_in.var(axis=1) + s_out.var(axis=1)  # ddof = 0
        )
        maxima.append(stats.norm.cdf(d.max(axis=1)))
    return np.concatenate(maxima)


# --------------------------------------------------------------------------- analytic null


@pytest.mark.parametrize(("n_in", "n_out"), [(8, 8), (6, 10)])
def test_analytic_null_max_quantile_matches_monte_carlo(n_in: int, n_out: int) -> None:
    n_records = 500
    maxima = _simulated_null_max_auc(n_in, n_out, n_records, replicates=4000, seed=n_in)
    counts_in, counts_out = np.full(n_records, n_in), np.full(n_records, n_out)
    for q in (0.5, 0.95):
        analytic = analytic_null_max_quantile(counts_in, counts_out, quantile=q)
        assert analytic == pytest.approx(float(np.quantile(maxima, q)), abs=0.01)


def test_analytic_null_max_quantile_solves_the_product_cdf() -> None:
    # Mixed counts: the quantile d solves sum_i log F_i(d) = log q, F_i a scaled t CDF.
    rng = np.random.default_rng(1)
    n_in = rng.integers(4, 20, 300)
    n_out = rng.integers(4, 20, 300)

    def log_cdf_sum(d: float) -> float:
        total = 0.0
        for a, b in zip(n_in.tolist(), n_out.tolist(), strict=True):
            c = math.sqrt((1 / a + 1 / b) / ((a - 1) / a + (b - 1) / b))
            total += stats.t.logcdf(d / c, a + b - 2)
        return total

    for q in (0.5, 0.95):
        d = optimize.brentq(lambda x, q=q: log_cdf_sum(x) - math.log(q), 0.0, 20.0, xtol=1e-12)
        expected = stats.norm.cdf(d)
        assert analytic_null_max_quantile(n_in, n_out, quantile=q) == pytest.approx(
            expected, abs=1e-8
        )


def test_analytic_null_max_quantile_is_order_invariant_and_monotone() -> None:
    rng = np.random.default_rng(2)
    n_in, n_out = rng.integers(3, 30, 200), rng.integers(3, 30, 200)
    perm = rng.permutation(200)
    base = analytic_null_max_quantile(n_in, n_out)
    assert analytic_null_max_quantile(n_in[perm], n_out[perm]) == pytest.approx(base, abs=1e-12)
    # More records: higher floor. More models: lower floor.
    k16 = np.full(1000, 8)
    k32 = np.full(1000, 16)
    assert analytic_null_max_quantile(k16, k16) > analytic_null_max_quantile(k32, k32)
    assert analytic_null_max_quantile(k16[:100], k16[:100]) < analytic_null_max_quantile(k16, k16)
    assert analytic_null_max_quantile(k16, k16, 0.5) < analytic_null_max_quantile(k16, k16, 0.95)


@pytest.mark.parametrize(
    ("n_models", "design_median", "design_q95"),
    [(16, 0.97, 0.991), (32, 0.87, 0.907), (64, 0.76, 0.805)],
)
def test_design_noise_only_maxima(n_models: int, design_median: float, design_q95: float) -> None:
    # docs/statistics.md: 9,105 leak-free records; the largest record AUC has median about
    # 0.97 / 0.87 / 0.76 and 95th percentile (the floor the gate uses) 0.991 / 0.907 / 0.805.
    half = np.full(9105, n_models // 2)
    median = analytic_null_max_quantile(half, half, quantile=0.5)
    assert median == pytest.approx(design_median, abs=0.02)
    # docs/statistics.md's 95th percentiles were measured (Monte Carlo); the exact Gaussian law
    # sits within 0.006 of them (0.994 / 0.913 / 0.805).
    assert analytic_null_max_quantile(half, half) == pytest.approx(design_q95, abs=0.01)


# --------------------------------------------------------------------------- K needed


@pytest.mark.parametrize(
    ("n_records", "limit"), [(9105, 0.9), (9105, 0.8), (9105, 0.95), (500, 0.85), (50_000, 0.75)]
)
def test_reference_models_needed_is_smallest_even_k_below_limit(
    n_records: int, limit: float
) -> None:
    k = reference_models_needed(n_records, limit)
    assert k is not None
    assert k % 2 == 0 and k >= 4

    def floor(n_models: int) -> float:
        half = np.full(n_records, n_models // 2)
        return analytic_null_max_quantile(half, half)

    assert floor(k) < limit
    if k > 4:
        assert floor(k - 2) >= limit


def test_reference_models_needed_design_example() -> None:
    # 9,105 records at a 0.9 limit: K = 32 is not enough (q95 ~ 0.913 > 0.9).
    k = reference_models_needed(9105, 0.9)
    assert k is not None and k > 32
    half = np.full(9105, 16)
    assert analytic_null_max_quantile(half, half) > 0.9


def test_reference_models_needed_monotone_and_out_of_range() -> None:
    assert reference_models_needed(9105, 0.7) >= reference_models_needed(9105, 0.8)  # type: ignore[operator]
    assert reference_models_needed(100_000, 0.8) >= reference_models_needed(1000, 0.8)  # type: ignore[operator]
    assert reference_models_needed(9105, 0.5 + 1e-6) is None


# --------------------------------------------------------------------------- compute_noise_floor


def test_permutation_and_analytic_agree_on_gaussian_null() -> None:
    rng = np.random.default_rng(3)
    n_models, n_records = 32, 2000
    scores = rng.standard_normal((n_models, n_records))
    masks = _balanced_masks(n_models, n_records, rng)
    patient_index = np.arange(n_records, dtype=np.intp)
    common = {"at_risk_auc": 0.75, "limit": 0.9, "replicates": 400, "seed": 4}
    permutation = compute_noise_floor(
        scores, masks, patient_index, n_records, choice=NullChoice.PERMUTATION, **common
    )
    analytic = compute_noise_floor(
        scores, masks, patient_index, n_records, choice=NullChoice.ANALYTIC, **common
    )
    assert permutation.method is NullMethod.PERMUTATION and permutation.replicates == 400
    assert analytic.method is NullMethod.ANALYTIC and analytic.replicates is None
    assert permutation.max_patient_auc_q95 == pytest.approx(analytic.max_patient_auc_q95, abs=0.01)
    assert permutation.expected_at_risk == pytest.approx(analytic.expected_at_risk, rel=0.1)
    half = np.full(n_records, 16)
    assert analytic.max_patient_auc_q95 == pytest.approx(
        analytic_null_max_quantile(half, half), abs=1e-12
    )
    assert permutation.reference_models_needed == reference_models_needed(n_records, 0.9)
    assert permutation.limit == 0.9


def test_expected_at_risk_with_multi_record_patients() -> None:
    rng = np.random.default_rng(5)
    n_models, n_records, n_patients = 16, 1500, 600
    scores = rng.standard_normal((n_models, n_records))
    masks = _balanced_masks(n_models, n_records, rng)
    patient_index = np.r_[
        np.arange(n_patients), rng.integers(0, n_patients, n_records - n_patients)
    ]
    patient_index = patient_index.astype(np.intp)
    at_risk = 0.65
    analytic = compute_noise_floor(
        scores,
        masks,
        patient_index,
        n_patients,
        at_risk_auc=at_risk,
        limit=None,
        replicates=1,
        seed=0,
        choice=NullChoice.ANALYTIC,
    )
    # By hand: a patient exceeds unless every one of its records stays below.
    c = math.sqrt(1 / 7)
    p_below = stats.t.cdf(stats.norm.ppf(at_risk) / c, 14)
    sizes = np.bincount(patient_index, minlength=n_patients)
    by_hand = float(np.sum(1 - p_below**sizes))
    assert analytic.expected_at_risk == pytest.approx(by_hand, rel=1e-9)
    assert analytic.reference_models_needed is None and analytic.limit is None
    permutation = compute_noise_floor(
        scores,
        masks,
        patient_index,
        n_patients,
        at_risk_auc=at_risk,
        limit=None,
        replicates=100,
        seed=6,
        choice=NullChoice.PERMUTATION,
    )
    assert permutation.expected_at_risk == pytest.approx(by_hand, rel=0.05)
    # Patients, not records, are counted.
    assert permutation.expected_at_risk < 0.85 * float(n_records * (1 - p_below))


def test_permutation_keeps_counts_and_is_seeded() -> None:
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((12, 300))
    masks = _balanced_masks(12, 300, rng)
    masks_copy, scores_copy = masks.copy(), scores.copy()
    index = np.arange(300, dtype=np.intp)
    kwargs = {"at_risk_auc": 0.8, "limit": None, "replicates": 30, "choice": NullChoice.PERMUTATION}
    a = compute_noise_floor(scores, masks, index, 300, seed=1, **kwargs)
    b = compute_noise_floor(scores, masks, index, 300, seed=1, **kwargs)
    c = compute_noise_floor(scores, masks, index, 300, seed=2, **kwargs)
    assert a == b
    assert a.max_patient_auc_q95 != c.max_patient_auc_q95
    np.testing.assert_array_equal(masks, masks_copy)
    np.testing.assert_array_equal(scores, scores_copy)


def test_permutation_removes_a_real_membership_effect() -> None:
    # Strong leakage in the data; the permutation null must still look like noise.
    rng = np.random.default_rng(8)
    n_models, n_records = 16, 400
    masks = _balanced_masks(n_models, n_records, rng)
    scores = rng.standard_normal((n_models, n_records)) + 3.0 * masks
    index = np.arange(n_records, dtype=np.intp)
    floor = compute_noise_floor(
        scores,
        masks,
        index,
        n_records,
        at_risk_auc=0.9,
        limit=None,
        replicates=50,
        seed=0,
        choice=NullChoice.PERMUTATION,
    )
    assert floor.max_patient_auc_q95 < 0.99
    assert floor.expected_at_risk < 0.1 * n_records


class _FakeClock:
    """A clock that advances ``step`` seconds per reading: replicates cost known time."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _floor(scores: np.ndarray, masks: np.ndarray, **kwargs: object) -> object:
    n = masks.shape[1]
    return compute_noise_floor(
        scores, masks, np.arange(n, dtype=np.intp), n, at_risk_auc=0.8, limit=None, **kwargs
    )


def test_auto_runs_every_replicate_within_the_budget_and_says_so() -> None:
    rng = np.random.default_rng(9)
    scores, masks = rng.standard_normal((8, 50)), _balanced_masks(8, 50, rng)
    floor = _floor(scores, masks, replicates=30, seed=0, clock=_FakeClock(0.01))
    assert floor.method is NullMethod.PERMUTATION and floor.replicates == 30
    assert "30 replicates within the time budget of 120 s" in floor.reason
    assert floor.to_dict()["reason"] == floor.reason and floor.to_dict()["time_budget_s"] == 120


def test_auto_switches_to_analytic_over_budget_only_when_balanced() -> None:
    rng = np.random.default_rng(10)
    scores, masks = rng.standard_normal((8, 50)), _balanced_masks(8, 50, rng)
    # Each replicate "takes" 1 s; 1000 of them would overrun a 10 s budget.
    floor = _floor(
        scores, masks, replicates=1000, seed=0, time_budget_s=10.0, clock=_FakeClock(1.0)
    )
    assert floor.method is NullMethod.ANALYTIC and floor.replicates is None
    assert floor.balanced and "overrun the time budget of 10 s" in floor.reason
    half = np.full(50, 4)
    assert floor.max_patient_auc_q95 == pytest.approx(analytic_null_max_quantile(half, half))
    unbalanced = masks.copy()
    unbalanced[:, :5] = np.arange(8)[:, None] < 3  # 3 IN / 5 OUT for five records
    limited = _floor(
        scores, unbalanced, replicates=1000, seed=0, time_budget_s=10.0, clock=_FakeClock(1.0)
    )
    assert limited.method is NullMethod.PERMUTATION and not limited.balanced
    assert limited.replicates == MIN_REPLICATES  # the budget ran out; never fewer than this
    assert f"ran out after {MIN_REPLICATES} of 1000 replicates" in limited.reason


def test_analytic_is_refused_for_unbalanced_counts() -> None:
    rng = np.random.default_rng(11)
    scores, masks = rng.standard_normal((8, 40)), _balanced_masks(8, 40, rng)
    masks[:, 0] = np.arange(8) < 3
    with pytest.raises(InputError, match=r"'null' parameter of risk is 'analytic'.*1 of 40"):
        _floor(scores, masks, replicates=10, seed=0, choice=NullChoice.ANALYTIC)


def test_permutation_matches_the_analytic_law_where_the_law_is_exact() -> None:
    # The analytic null is exact for Gaussian scores with balanced counts: the permutation
    # null of such scores has the same 95th percentile of the maximum (within MC error).
    rng = np.random.default_rng(12)
    n_models, n_records = 16, 3000
    scores = rng.standard_normal((n_models, n_records))
    masks = _balanced_masks(n_models, n_records, rng)
    perm = _floor(scores, masks, replicates=300, seed=1, choice=NullChoice.PERMUTATION)
    half = np.full(n_records, 8)
    assert perm.max_patient_auc_q95 == pytest.approx(
        analytic_null_max_quantile(half, half), abs=0.01
    )


def test_the_null_applies_the_audits_estimator_to_tiny_real_spreads() -> None:
    """Scores saturated near one value (0.5 +- 1e-10) have a real, tiny spread: the null's
    one-pass sums must not floor it to SD_FLOOR where the audit keeps it, or the null
    AUCs collapse to 0.5 and the noise floor passes an audit it should fail."""
    from privacy_gate.noise_floor import _Permuter
    from privacy_gate.record_stats import plain_auc, record_moments

    rng = np.random.default_rng(13)
    masks = _balanced_masks(16, 60, rng)
    scores = 0.5 + 1e-10 * rng.standard_normal((16, 60)) + 3e-10 * masks
    scores[:, 0] = 0.25  # an exactly constant record: SD_FLOOR on both sides, as audited
    index = np.arange(60, dtype=np.intp)
    permuter = _Permuter(scores, masks, index, 60, 0, None, plain_auc)
    unpermuted = plain_auc(permuter._moments(masks.astype(np.float64)))
    audited = plain_auc(record_moments(scores, masks))
    np.testing.assert_allclose(unpermuted, audited, rtol=1e-6)
    assert audited[1:].min() > 0.8 and audited[0] == 0.5
