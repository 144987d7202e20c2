"""Patient aggregation and the patient-level summary against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy_gate.patients import (
    TAIL_COUNT_LEVELS,
    aggregate_patients,
    benjamini_hochberg_count,
    distribution_summary,
    survival_curve,
    tail_counts,
)


def _pool(
    n_patients: int, n_records: int, seed: int, *, ties: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Record AUCs, SEs and a patient index in which every patient has a record."""
    rng = np.random.default_rng(seed)
    patient_index = np.r_[
        np.arange(n_patients), rng.integers(0, n_patients, n_records - n_patients)
    ]
    patient_index = rng.permutation(patient_index).astype(np.intp)
    auc = 0.5 + 0.5 * rng.beta(1.0, 4.0, n_records)
    if ties:
        auc = np.round(auc, 2)
    se = rng.uniform(0.01, 0.1, n_records)
    return auc, se, patient_index


def _by_patient(values: np.ndarray, patient_index: np.ndarray) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(patient_index.tolist()):
        groups.setdefault(p, []).append(i)
    return groups


# --------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregate_matches_dict_loop(seed: int) -> None:
    auc, se, patient_index = _pool(60, 200, seed)
    result = aggregate_patients(auc, se, patient_index, 60)
    groups = _by_patient(auc, patient_index)
    for p in range(60):
        records = groups[p]
        values = [float(auc[i]) for i in records]
        worst = max(records, key=lambda i: auc[i])
        assert result.n_records[p] == len(records)
        assert result.auc_max[p] == max(values)
        assert result.auc_mean[p] == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert result.worst_record[p] == worst
        assert result.auc_se[p] == se[worst]


def test_aggregate_with_ties_picks_a_worst_record_of_the_patient() -> None:
    auc, se, patient_index = _pool(30, 150, seed=3, ties=True)
    result = aggregate_patients(auc, se, patient_index, 30)
    groups = _by_patient(auc, patient_index)
    for p in range(30):
        w = int(result.worst_record[p])
        assert patient_index[w] == p
        assert auc[w] == max(auc[i] for i in groups[p])
        assert result.auc_se[p] == se[w]


def test_aggregate_hand_example() -> None:
    auc = np.array([0.6, 0.9, 0.7, 0.55, 0.8])
    se = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    patient_index = np.array([1, 0, 1, 2, 1], dtype=np.intp)
    result = aggregate_patients(auc, se, patient_index, 3)
    np.testing.assert_array_equal(result.n_records, [1, 3, 1])
    np.testing.assert_array_equal(result.auc_max, [0.9, 0.8, 0.55])
    np.testing.assert_allclose(result.auc_mean, [0.9, 0.7, 0.55])
    np.testing.assert_array_equal(result.worst_record, [1, 4, 3])
    np.testing.assert_array_equal(result.auc_se, [0.02, 0.05, 0.04])


@st.composite
def _patients(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    n_patients = draw(st.integers(1, 15))
    extra = draw(st.lists(st.integers(0, n_patients - 1), max_size=30))
    patient_index = np.array(list(range(n_patients)) + extra, dtype=np.intp)
    perm = draw(st.permutations(range(len(patient_index))))
    patient_index = patient_index[np.array(perm, dtype=np.intp)]
    auc = draw(
        st.lists(
            st.floats(0.5, 1.0 - 1e-10), min_size=len(patient_index), max_size=len(patient_index)
        )
    )
    return np.array(auc), patient_index, n_patients


@settings(max_examples=50, deadline=None)
@given(_patients())
def test_patient_max_is_at_least_mean(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    auc, patient_index, n_patients = case
    auc_copy, index_copy = auc.copy(), patient_index.copy()
    result = aggregate_patients(auc, np.full(len(auc), 0.05), patient_index, n_patients)
    assert np.all(result.auc_max >= result.auc_mean - 1e-12)
    # Both lie in the range of the patient's own record AUCs.
    for p in range(n_patients):
        own = auc[patient_index == p]
        assert result.auc_max[p] == own.max()
        assert own.min() - 1e-12 <= result.auc_mean[p] <= own.max() + 1e-12
    np.testing.assert_array_equal(auc, auc_copy)
    np.testing.assert_array_equal(patient_index, index_copy)


# --------------------------------------------------------------------------- BH


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fdr", [0.01, 0.05, 0.2])
def test_benjamini_hochberg_matches_scipy(seed: int, fdr: float) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    signal = rng.random(n) < 0.3
    p = np.where(signal, rng.beta(0.1, 20.0, n), rng.random(n))
    expected = int(np.count_nonzero(stats.false_discovery_control(p) <= fdr))
    assert benjamini_hochberg_count(p, fdr) == expected


@pytest.mark.parametrize("seed", range(4))
def test_benjamini_hochberg_with_more_tests_than_given(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n_tests = 500
    all_p = np.where(rng.random(n_tests) < 0.1, rng.beta(0.05, 50.0, n_tests), rng.random(n_tests))
    expected = int(np.count_nonzero(stats.false_discovery_control(all_p) <= 0.05))
    assert expected > 0
    smallest = np.sort(all_p)[:60]
    assert benjamini_hochberg_count(smallest, 0.05, n_tests=n_tests) == expected
    # Only the given ones, but with ones standing in for the rest: same count.
    padded = np.r_[smallest, np.ones(n_tests - 60)]
    assert benjamini_hochberg_count(padded, 0.05) == expected
    # Fewer hypotheses would reject at least as many.
    assert benjamini_hochberg_count(smallest, 0.05) >= expected


def test_benjamini_hochberg_edge_cases() -> None:
    assert benjamini_hochberg_count(np.array([]), 0.05) == 0
    assert benjamini_hochberg_count(np.array([0.2, 0.3]), 0.05) == 0
    # Step-up: 0.04 > 0.05 * 1/2 = 0.025 alone, but 0.045 <= 0.05 * 2/2 rescues both.
    assert benjamini_hochberg_count(np.array([0.045, 0.04]), 0.05) == 2
    assert benjamini_hochberg_count(np.array([0.045, 0.04]), 0.05, n_tests=4) == 0


# --------------------------------------------------------------------------- summaries


def test_tail_counts_vs_direct_counting() -> None:
    rng = np.random.default_rng(5)
    auc = np.r_[0.5 + 0.5 * rng.random(500), TAIL_COUNT_LEVELS]  # exact levels count (>=)
    counts = tail_counts(auc)
    assert list(counts) == [repr(level) for level in TAIL_COUNT_LEVELS]
    for level in TAIL_COUNT_LEVELS:
        assert counts[repr(level)] == sum(1 for a in auc.tolist() if a >= level)
    assert tail_counts(np.array([0.6, 0.59999]), (0.6,)) == {"0.6": 1}


def test_distribution_summary() -> None:
    values = np.array([0.5, 0.55, 0.6, 0.7, 0.95])
    summary = distribution_summary(values)
    assert summary["max"] == 0.95
    assert summary["median"] == 0.6
    assert summary["mean"] == pytest.approx(0.66)
    # Linear interpolation: position 0.9 * 4 = 3.6 between 0.7 and 0.95.
    assert summary["q90"] == pytest.approx(0.7 + 0.6 * 0.25)


def test_survival_share_matches_direct_counting() -> None:
    auc, se, patient_index = _pool(80, 250, seed=6)
    patient_auc = aggregate_patients(auc, se, patient_index, 80).auc_max
    grid = np.linspace(0.5, 1.0, 51)
    curve = survival_curve(patient_auc, grid)
    patient_max = [max(auc[patient_index == p]) for p in range(80)]
    expected = [sum(1 for a in patient_max if a >= x) / 80 for x in grid.tolist()]
    np.testing.assert_allclose(curve["share"], expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(curve["auc"], grid)
    share = np.array(curve["share"])
    assert share[0] == 1.0
    assert np.all(np.diff(share) <= 0)
    lower, upper = np.array(curve["lower"]), np.array(curve["upper"])
    assert np.all(lower <= share) and np.all(share <= upper)
    assert np.all(np.diff(lower) <= 1e-12) and np.all(np.diff(upper) <= 1e-12)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_survival_band_is_clopper_pearson(level: float) -> None:
    rng = np.random.default_rng(7)
    n = 137
    patient_auc = 0.5 + 0.5 * rng.beta(1.0, 3.0, n)
    patient_auc[:5] = 0.7  # ties at a grid point count as ">="
    grid = np.r_[0.5, np.linspace(0.6, 0.95, 15), 0.7, 1.0]
    curve = survival_curve(patient_auc, grid, level=level)
    for x, share, lower, upper in zip(
        grid, curve["share"], curve["lower"], curve["upper"], strict=True
    ):
        k = int(np.count_nonzero(patient_auc >= x))
        assert share == pytest.approx(k / n, abs=1e-15)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
        assert lower == pytest.approx(ci.low, abs=1e-9)
        assert upper == pytest.approx(ci.high, abs=1e-9)
    # All patients above the first grid point, none above 1: the band touches 1 and 0.
    assert curve["upper"][0] == 1.0
    assert curve["lower"][-1] == 0.0


def test_survival_band_covers_the_true_share_in_repeated_cohorts() -> None:
    # The band is a (conservative) 95% interval for the share in the population.
    rng = np.random.default_rng(8)
    grid = np.array([0.6, 0.7, 0.8])
    truth = 1.0 - (grid - 0.5) / 0.5  # uniform patient AUCs on [0.5, 1]
    covered = np.zeros(len(grid))
    cohorts = 300
    for _ in range(cohorts):
        curve = survival_curve(0.5 + 0.5 * rng.random(60), grid)
        covered += (np.array(curve["lower"]) <= truth) & (truth <= np.array(curve["upper"]))
    assert np.all(covered / cohorts >= 0.92)
