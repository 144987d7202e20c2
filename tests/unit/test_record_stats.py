"""Per-record statistics against independent computations and closed forms (docs/statistics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

import privacy_gate.record_stats as record_stats_module
from privacy_gate.record_stats import (
    AUC_CEILING,
    SD_FLOOR,
    binormal_auc,
    binormal_tpr,
    compute_record_stats,
    gdp_mu,
    hanley_mcneil_se,
    record_moments,
)

FPR = (1e-3, 1e-2)


def _signals(
    n_models: int, n_records: int, seed: int, effect: float = 0.7
) -> tuple[np.ndarray, np.ndarray]:
    """Random scores and masks; every record has at least one IN and one OUT model."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n_models, n_records)) < 0.5
    masks[0] = True
    masks[1] = False
    scale = rng.uniform(0.2, 3.0, n_records)
    centre = rng.normal(0.0, 3.0, n_records)
    scores = centre + scale * rng.standard_normal((n_models, n_records)) + effect * masks
    return scores, masks


def _loop_moments(scores: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """The docs/statistics.md definition, one record at a time."""
    out: dict[str, list[float]] = {k: [] for k in ("mu_in", "sd_in", "mu_out", "sd_out")}
    n_in, n_out = [], []
    for j in range(scores.shape[1]):
        column = scores[:, j].astype(np.float64)
        for side, values in (("in", column[masks[:, j]]), ("out", column[~masks[:, j]])):
            out[f"mu_{side}"].append(float(np.mean(values)))
            constant = bool(np.all(values == values[0]))
            out[f"sd_{side}"].append(SD_FLOOR if constant else float(np.std(values, ddof=0)))
        n_in.append(int(masks[:, j].sum()))
        n_out.append(int((~masks[:, j]).sum()))
    result = {k: np.array(v) for k, v in out.items()}
    result["n_in"] = np.array(n_in)
    result["n_out"] = np.array(n_out)
    return result


def _hm_by_hand(a: float, n_in: int, n_out: int) -> float:
    q0 = a / (2 - a)
    q1 = 2 * a * a / (1 + a)
    return math.sqrt(
        (a * (1 - a) + (n_in - 1) * (q0 - a * a) + (n_out - 1) * (q1 - a * a)) / (n_in * n_out)
    )


def _assert_same(actual: np.ndarray, desired: np.ndarray) -> None:
    """Equal up to the last bits: NumPy's axis-0 sums round differently with memory layout
    (a column slice or a fancy-indexed copy is summed in another order)."""
    np.testing.assert_allclose(actual, desired, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- moments


@pytest.mark.parametrize(("n_models", "n_records", "seed"), [(16, 40, 0), (7, 25, 1), (64, 13, 2)])
def test_moments_match_per_record_loop(n_models: int, n_records: int, seed: int) -> None:
    scores, masks = _signals(n_models, n_records, seed)
    m = record_moments(scores, masks)
    expected = _loop_moments(scores, masks)
    for name in ("mu_in", "sd_in", "mu_out", "sd_out"):
        np.testing.assert_allclose(getattr(m, name), expected[name], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(m.n_in, expected["n_in"])
    np.testing.assert_array_equal(m.n_out, expected["n_out"])


def test_full_stats_match_per_record_loop() -> None:
    scores, masks = _signals(20, 30, seed=3)
    result = compute_record_stats(scores, masks, FPR)
    ref = _loop_moments(scores, masks)
    for j in range(scores.shape[1]):
        mu_in, sd_in, mu_out, sd_out = (ref[k][j] for k in ("mu_in", "sd_in", "mu_out", "sd_out"))
        z = (mu_in - mu_out) / math.sqrt(sd_in**2 + sd_out**2)
        auc = min(max(stats.norm.cdf(z), 0.5), 1 - 1e-10)
        assert result.auc[j] == pytest.approx(auc, rel=1e-12, abs=1e-12)
        se = _hm_by_hand(auc, int(ref["n_in"][j]), int(ref["n_out"][j]))
        assert result.auc_se[j] == pytest.approx(se, rel=1e-10)
        assert result.mu[j] == pytest.approx(
            math.sqrt(2) * stats.norm.ppf(auc), rel=1e-9, abs=1e-12
        )
        for i, f in enumerate(FPR):
            threshold = stats.norm.ppf(1 - f, mu_out, sd_out)
            tpr = stats.norm.sf(threshold, mu_in, sd_in)
            assert result.tpr[i, j] == pytest.approx(tpr, rel=1e-8, abs=1e-14)
    np.testing.assert_array_equal(result.fpr, np.array(FPR))


# --------------------------------------------------------------------------- binormal AUC


def test_binormal_auc_closed_form() -> None:
    rng = np.random.default_rng(4)
    mu_in = rng.normal(1.0, 1.0, 200)
    mu_out = rng.normal(0.0, 1.0, 200)
    sd_in = rng.uniform(0.1, 2.0, 200)
    sd_out = rng.uniform(0.1, 2.0, 200)
    expected = stats.norm.cdf((mu_in - mu_out) / np.hypot(sd_in, sd_out))
    expected = np.clip(expected, 0.5, 1 - 1e-10)
    np.testing.assert_allclose(binormal_auc(mu_in, sd_in, mu_out, sd_out), expected, rtol=1e-12)


def test_binormal_auc_hand_values() -> None:
    # Phi(1) and Phi(1/sqrt(2)), from tables.
    one = binormal_auc(np.array([1.0]), np.array([0.6]), np.array([0.0]), np.array([0.8]))
    assert one[0] == pytest.approx(0.8413447460685429, abs=1e-12)
    half = binormal_auc(np.array([1.0]), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    assert half[0] == pytest.approx(0.7602499389065233, abs=1e-12)


def test_binormal_auc_matches_empirical_mann_whitney_on_large_gaussian_sample() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    in_scores = rng.normal(1.0, 1.0, n)
    out_scores = rng.normal(0.0, 1.0, n)
    scores = np.concatenate([in_scores, out_scores])[:, None]
    masks = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])[:, None]
    auc = compute_record_stats(scores, masks, FPR).auc[0]
    truth = stats.norm.cdf(1 / math.sqrt(2))
    u = stats.mannwhitneyu(in_scores, out_scores).statistic
    empirical = u / (n * n)
    assert auc == pytest.approx(truth, abs=0.006)
    assert empirical == pytest.approx(truth, abs=0.006)
    assert auc == pytest.approx(empirical, abs=0.006)


def test_binormal_auc_is_clipped() -> None:
    below = binormal_auc(np.array([-3.0]), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    assert below[0] == 0.5
    above = binormal_auc(np.array([100.0]), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    assert above[0] == 1 - 1e-10
    assert AUC_CEILING == 1 - 1e-10
    assert np.isfinite(gdp_mu(above))


def test_record_auc_of_a_leak_free_record_is_never_below_half() -> None:
    scores, masks = _signals(16, 400, seed=6, effect=-1.0)
    auc = compute_record_stats(scores, masks, FPR).auc
    assert auc.min() == 0.5
    assert auc.max() <= 1 - 1e-10


# --------------------------------------------------------------------------- Hanley-McNeil


@pytest.mark.parametrize(
    ("auc", "n_in", "n_out", "expected"),
    [
        # Q0 = 0.8/1.2 = 2/3, Q1 = 1.28/1.8 = 0.71111; A(1-A) = 0.16,
        # 9 (2/3 - 0.64) = 0.24, 9 (0.71111 - 0.64) = 0.64 -> sqrt(1.04 / 100).
        (0.8, 10, 10, math.sqrt(0.0104)),
        # Q0 = 1/3, Q1 = 1/3, A^2 = 1/4: (1/4 + 4/12 + 9/12) / 50 = (1/4 + 1/3 + 3/4) / 50.
        (0.5, 5, 10, math.sqrt((0.25 + 4 * (1 / 3 - 0.25) + 9 * (1 / 3 - 0.25)) / 50)),
        # A = 0.9, n = (8, 8): Q0 = 0.9/1.1, Q1 = 1.62/1.9.
        (0.9, 8, 8, math.sqrt((0.09 + 7 * (0.9 / 1.1 - 0.81) + 7 * (1.62 / 1.9 - 0.81)) / 64)),
    ],
)
def test_hanley_mcneil_hand_values(auc: float, n_in: int, n_out: int, expected: float) -> None:
    se = hanley_mcneil_se(np.array([auc]), np.array([n_in]), np.array([n_out]))
    assert se[0] == pytest.approx(expected, rel=1e-12)


def test_hanley_mcneil_hand_value_digits() -> None:
    se = hanley_mcneil_se(np.array([0.8]), np.array([10]), np.array([10]))
    assert se[0] == pytest.approx(0.10198039027185569, rel=1e-12)


def test_hanley_mcneil_roughly_matches_simulated_sampling_error() -> None:
    rng = np.random.default_rng(7)
    n, replicates, true_auc = 50, 2000, 0.76
    shift = math.sqrt(2) * stats.norm.ppf(true_auc)
    scores = rng.standard_normal((2 * n, replicates))
    masks = np.zeros((2 * n, replicates), bool)
    masks[:n] = True
    scores[:n] += shift
    estimates = compute_record_stats(scores, masks, FPR).auc
    se = hanley_mcneil_se(np.array([true_auc]), np.array([n]), np.array([n]))[0]
    assert float(np.mean(estimates)) == pytest.approx(true_auc, abs=0.01)
    assert float(np.std(estimates)) == pytest.approx(se, rel=0.2)
    # And the Mann-Whitney AUC, the estimator Hanley & McNeil describe.
    in_s, out_s = scores[:n], scores[n:]
    mw = (in_s[:, None, :] > out_s[None, :, :]).mean(axis=(0, 1))
    assert float(np.std(mw)) == pytest.approx(se, rel=0.2)


# --------------------------------------------------------------------------- TPR and GDP mu


def test_binormal_tpr_is_tail_beyond_out_quantile() -> None:
    rng = np.random.default_rng(8)
    mu_in, mu_out = rng.normal(1, 1, 50), rng.normal(0, 1, 50)
    sd_in, sd_out = rng.uniform(0.3, 2, 50), rng.uniform(0.3, 2, 50)
    fpr = np.array([1e-4, 1e-3, 1e-2, 0.1, 0.5])
    tpr = binormal_tpr(mu_in, sd_in, mu_out, sd_out, fpr)
    assert tpr.shape == (5, 50)
    threshold = stats.norm.ppf(1 - fpr[:, None], mu_out[None, :], sd_out[None, :])
    expected = 1 - stats.norm.cdf((threshold - mu_in[None, :]) / sd_in[None, :])
    np.testing.assert_allclose(tpr, expected, rtol=1e-7, atol=1e-12)


def test_binormal_tpr_matches_empirical_rate() -> None:
    rng = np.random.default_rng(9)
    in_s, out_s = rng.normal(2.0, 1.5, 400_000), rng.normal(0.0, 1.0, 400_000)
    threshold = np.quantile(out_s, 0.99)
    tpr = binormal_tpr(
        np.array([2.0]), np.array([1.5]), np.array([0.0]), np.array([1.0]), np.array([0.01])
    )
    assert tpr[0, 0] == pytest.approx(float(np.mean(in_s > threshold)), abs=0.005)


def test_gdp_mu_closed_form() -> None:
    auc = np.array([0.5, 0.6, 0.76, 0.9, 0.99])
    np.testing.assert_allclose(
        gdp_mu(auc), math.sqrt(2) * stats.norm.ppf(auc), rtol=1e-12, atol=1e-15
    )
    assert gdp_mu(np.array([0.5]))[0] == 0.0
    # A = Phi(mu / sqrt 2) inverts it.
    assert stats.norm.cdf(gdp_mu(np.array([0.83]))[0] / math.sqrt(2)) == pytest.approx(0.83)


# --------------------------------------------------------------------------- constant scores


def test_constant_scores_stay_finite_and_equal_means_give_half() -> None:
    n_models = 10
    masks = np.zeros((n_models, 5), bool)
    masks[:5] = True
    scores = np.random.default_rng(10).normal(size=(n_models, 5))
    scores[:, 0] = 3.7  # IN and OUT constant, equal
    scores[:5, 1], scores[5:, 1] = 2.0, 1.0  # both constant, different
    scores[:5, 2] = 0.1  # IN constant only
    scores[5:, 3] = -1.3  # OUT constant only
    result = compute_record_stats(scores, masks, FPR)
    for array in (result.auc, result.auc_se, result.tpr, result.mu):
        assert np.all(np.isfinite(array))
    m = result.moments
    assert result.auc[0] == 0.5
    assert result.mu[0] == 0.0
    assert result.auc[1] == 1 - 1e-10
    assert m.sd_in[0] == m.sd_out[0] == m.sd_in[1] == m.sd_out[1] == SD_FLOOR
    assert m.sd_in[2] == SD_FLOOR and m.sd_out[2] == pytest.approx(np.std(scores[5:, 2]))
    assert m.sd_out[3] == SD_FLOOR and m.sd_in[3] == pytest.approx(np.std(scores[:5, 3]))
    # Record 4 has real variance: untouched.
    assert m.sd_in[4] == pytest.approx(np.std(scores[:5, 4]), rel=1e-12)
    assert m.sd_out[4] == pytest.approx(np.std(scores[5:, 4]), rel=1e-12)


@pytest.mark.parametrize("value", [0.0, 0.1, -7.3, 36.6, 1638.96434371])
def test_equal_constant_scores_give_exactly_half(value: float) -> None:
    # docs/statistics.md: constant scores get the floor and "equal means give 0.5". Every score of
    # the record is the same number, so mu_in == mu_out == value and the AUC is 0.5, mu 0.
    scores = np.full((32, 1), value)
    masks = np.zeros((32, 1), bool)
    masks[::3] = True
    result = compute_record_stats(scores, masks, FPR)
    assert np.isfinite(result.mu[0]) and np.isfinite(result.auc_se[0])
    assert result.auc[0] == 0.5
    assert result.mu[0] == 0.0


def test_floor_does_not_move_records_with_tiny_real_variance() -> None:
    scores = np.zeros((8, 1))
    scores[:, 0] = [1.0, 1.0 + 1e-9, 1.0, 1.0, 0.0, 2e-9, 0.0, 0.0]
    masks = np.zeros((8, 1), bool)
    masks[:4] = True
    m = record_moments(scores, masks)
    assert m.sd_in[0] == pytest.approx(np.std(scores[:4, 0]), rel=1e-6)
    assert m.sd_out[0] == pytest.approx(np.std(scores[4:, 0]), rel=1e-6)
    assert m.sd_in[0] < SD_FLOOR and m.sd_out[0] < SD_FLOOR


def test_variance_that_underflows_stays_finite() -> None:
    # Not constant, but the squared deviations underflow to 0.
    scores = np.array([[6.6e-264], [0.0], [0.0], [1.0], [2.0]])
    masks = np.array([[True], [False], [True], [False], [False]])
    result = compute_record_stats(scores, masks, FPR)
    for array in (result.auc, result.auc_se, result.tpr, result.mu):
        assert np.all(np.isfinite(array))
    assert result.auc[0] == 0.5


# --------------------------------------------------------------------------- dtypes, inputs


def test_float32_matches_float64() -> None:
    scores, masks = _signals(16, 200, seed=11)
    r64 = compute_record_stats(scores, masks, FPR)
    r32 = compute_record_stats(scores.astype(np.float32), masks, FPR)
    for name in ("mu_in", "sd_in", "mu_out", "sd_out"):
        np.testing.assert_allclose(
            getattr(r32.moments, name), getattr(r64.moments, name), rtol=1e-6, atol=1e-6
        )
    np.testing.assert_allclose(r32.auc, r64.auc, atol=1e-6)
    np.testing.assert_allclose(r32.auc_se, r64.auc_se, atol=1e-6)
    np.testing.assert_allclose(r32.tpr, r64.tpr, atol=1e-5)
    assert r32.auc.dtype == np.float64
    # Exactly the float64 result of the same (rounded) values.
    exact = compute_record_stats(scores.astype(np.float32).astype(np.float64), masks, FPR)
    np.testing.assert_array_equal(r32.auc, exact.auc)


@st.composite
def _signal_strategy(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n_models = draw(st.integers(2, 9))
    n_records = draw(st.integers(1, 12))
    element = st.floats(-1e4, 1e4, allow_nan=False)
    scores = draw(hnp.arrays(np.float64, (n_models, n_records), elements=element))
    masks = draw(hnp.arrays(np.bool_, (n_models, n_records)))
    masks[0] = True
    masks[1] = False
    return scores, masks


@settings(max_examples=50, deadline=None)
@given(_signal_strategy())
def test_inputs_not_mutated_and_read_only_inputs_work(
    signals: tuple[np.ndarray, np.ndarray],
) -> None:
    scores, masks = signals
    scores_copy, masks_copy = scores.copy(), masks.copy()
    first = compute_record_stats(scores, masks, FPR)
    np.testing.assert_array_equal(scores, scores_copy)
    np.testing.assert_array_equal(masks, masks_copy)
    scores.setflags(write=False)
    masks.setflags(write=False)
    second = compute_record_stats(scores, masks, FPR)
    np.testing.assert_array_equal(first.auc, second.auc)
    for array in (first.auc, first.auc_se, first.mu, first.tpr):
        assert np.all(np.isfinite(array))
    assert np.all((first.auc >= 0.5) & (first.auc <= 1 - 1e-10))
    expected = _loop_moments(scores, masks)
    for name in ("mu_in", "mu_out"):
        np.testing.assert_allclose(
            getattr(first.moments, name), expected[name], rtol=1e-9, atol=1e-9
        )


@settings(max_examples=30, deadline=None)
@given(_signal_strategy(), st.data())
def test_record_order_invariance(
    signals: tuple[np.ndarray, np.ndarray], data: st.DataObject
) -> None:
    scores, masks = signals
    perm = np.array(data.draw(st.permutations(range(scores.shape[1]))))
    base = compute_record_stats(scores, masks, FPR)
    # C-contiguous copies, so that NumPy sums every column in the same order.
    permuted = compute_record_stats(
        np.ascontiguousarray(scores[:, perm]), np.ascontiguousarray(masks[:, perm]), FPR
    )
    np.testing.assert_array_equal(permuted.auc, base.auc[perm])
    np.testing.assert_array_equal(permuted.auc_se, base.auc_se[perm])
    np.testing.assert_array_equal(permuted.tpr, base.tpr[:, perm])
    np.testing.assert_array_equal(permuted.mu, base.mu[perm])
    for name in ("mu_in", "sd_in", "mu_out", "sd_out", "n_in", "n_out"):
        np.testing.assert_array_equal(
            getattr(permuted.moments, name), getattr(base.moments, name)[perm]
        )


@pytest.mark.parametrize("chunk_elements", [1, 7, 33, 100])
def test_chunking_gives_identical_results(
    monkeypatch: pytest.MonkeyPatch, chunk_elements: int
) -> None:
    scores, masks = _signals(16, 37, seed=12)
    scores[:, 5] = 1.25  # a constant record inside a chunk
    whole = compute_record_stats(scores, masks, FPR)
    monkeypatch.setattr(record_stats_module, "_CHUNK_ELEMENTS", chunk_elements)
    chunked = compute_record_stats(scores, masks, FPR)
    for name in ("mu_in", "sd_in", "mu_out", "sd_out"):
        _assert_same(getattr(chunked.moments, name), getattr(whole.moments, name))
    for name in ("n_in", "n_out"):
        np.testing.assert_array_equal(getattr(chunked.moments, name), getattr(whole.moments, name))
    _assert_same(chunked.auc, whole.auc)
    _assert_same(chunked.auc_se, whole.auc_se)
    _assert_same(chunked.tpr, whole.tpr)
    assert chunked.moments.sd_in[5] == chunked.moments.sd_out[5] == SD_FLOOR
    expected = _loop_moments(scores, masks)
    np.testing.assert_allclose(chunked.moments.sd_in, expected["sd_in"], rtol=1e-12)
