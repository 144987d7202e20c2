"""Subgroup over-representation in the exposed tail, by patient, against hand
computations and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy_gate.records import MISSING
from privacy_gate.subgroups import (
    SEVERAL,
    GroupStatus,
    analyse_subgroups,
    patient_values,
    tail_patients,
)

FIGURES = (
    "observed",
    "expected",
    "relative_change",
    "pearson_residual",
    "p_value",
    "p_value_adjusted",
    "tail_rate",
    "max_patient_auc",
)

# --------------------------------------------------------------------------- tail


def test_tail_is_the_top_share_of_patients() -> None:
    rng = np.random.default_rng(0)
    auc = 0.5 + 0.5 * rng.random(1000)
    mask, threshold, target = tail_patients(auc, 0.99)
    assert target == 10 and mask.sum() == 10
    assert threshold == np.sort(auc)[-10]
    np.testing.assert_array_equal(mask, auc >= threshold)


def test_tail_target_rounds_the_ceiling_exactly() -> None:
    # (1 - 0.99) * 100 is 1.0000000000000009 in floating point: the tail is 1 patient, not 2.
    assert tail_patients(np.linspace(0.5, 1.0, 100), 0.99)[2] == 1
    assert tail_patients(np.linspace(0.5, 1.0, 9105), 0.99)[2] == 92  # ceil(91.05)
    assert tail_patients(np.array([0.7]), 0.99)[2] == 1  # never empty
    assert tail_patients(np.zeros(0), 0.99)[2] == 0


def test_ties_at_the_boundary_are_included_and_never_empty_the_tail() -> None:
    # 5% of patients clipped at the AUC ceiling: the old record tail "strictly above the 99th
    # percentile" was empty here, so no subgroup test ran.
    auc = np.r_[np.full(50, 1 - 1e-10), np.linspace(0.5, 0.8, 950)]
    mask, threshold, target = tail_patients(auc, 0.99)
    assert target == 10
    assert mask.sum() == 50 and threshold == 1 - 1e-10
    all_equal, threshold, _ = tail_patients(np.full(500, 0.73), 0.99)
    assert all_equal.all() and threshold == 0.73


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from([0.5, 0.55, 0.6, 0.75, 0.9, 0.99]), min_size=1, max_size=60),
    st.floats(0.5, 0.99),
    st.data(),
)
def test_tail_is_order_invariant_and_keeps_ties(
    values: list[float], q: float, data: st.DataObject
) -> None:
    auc = np.array(values)
    perm = np.array(data.draw(st.permutations(range(len(values)))), dtype=np.intp)
    mask, threshold, target = tail_patients(auc, q)
    mask_p, threshold_p, _ = tail_patients(auc[perm], q)
    assert threshold_p == threshold
    np.testing.assert_array_equal(mask_p, mask[perm])
    assert mask.sum() >= target >= 1
    for value in np.unique(auc):
        members = mask[auc == value]
        assert members.all() or not members.any()


# --------------------------------------------------------------------------- patient values


def test_patient_values_agree_missing_or_several() -> None:
    values = ["F", "F", MISSING, "M", "F", MISSING, "M", MISSING]
    index = np.array([0, 0, 1, 2, 2, 3, 3, 4], dtype=np.intp)
    assert patient_values(values, index, 5) == ("F", MISSING, SEVERAL, "M", MISSING)


# --------------------------------------------------------------------------- by hand


def _hand_pool() -> tuple[np.ndarray, dict[str, tuple[str, ...]]]:
    """100 patients; the 10 with AUC 0.95 form the tail at the 0.9 quantile.

    sex: F 30 (6 in the tail), M 60 (2), <missing> 6 (1), X 4 (1, too small at 5).
    site: A 50 (5 in the tail), B 50 (5).
    """
    auc = np.full(100, 0.55)
    tail = [0, 1, 2, 3, 4, 5, 30, 31, 90, 96]
    auc[tail] = 0.95
    auc[[6, 7]] = 0.6
    sex = ("F",) * 30 + ("M",) * 60 + (MISSING,) * 6 + ("X",) * 4
    non_tail = [i for i in range(100) if i not in tail]
    site = ["B"] * 100
    for i in tail[:5] + non_tail[:45]:
        site[i] = "A"
    return auc, {"sex": sex, "site": tuple(site)}


def test_per_group_figures_by_hand() -> None:
    auc, columns = _hand_pool()
    result = analyse_subgroups(auc, columns, tail_quantile=0.9, min_group_size=5)
    assert (result.tail_patients, result.tail_target, result.tail_threshold) == (10, 10, 0.95)
    assert result.tested_groups == 5  # F, M, X (hidden: 4 < 5 patients), A, B
    sex = result.columns["sex"]
    f, m = sex.groups["F"], sex.groups["M"]
    assert f.status is GroupStatus.TESTED and m.status is GroupStatus.TESTED
    assert (sex.tested_patients, sex.tail_patients) == (90, 8)
    assert (f.size, f.observed, m.size, m.observed) == (30, 6, 60, 2)
    assert f.expected == pytest.approx(8 * 30 / 90)
    assert m.expected == pytest.approx(8 * 60 / 90)
    assert f.relative_change == pytest.approx(1.25)
    assert m.relative_change == pytest.approx(-0.625)
    assert f.pearson_residual == pytest.approx((6 - 8 / 3) / math.sqrt(8 / 3))
    assert m.pearson_residual == pytest.approx((2 - 16 / 3) / math.sqrt(16 / 3))
    assert f.p_value == pytest.approx(stats.binomtest(6, 8, 1 / 3).pvalue, rel=1e-12)
    assert m.p_value == pytest.approx(stats.binomtest(2, 8, 2 / 3).pvalue, rel=1e-12)
    assert f.p_value_adjusted == pytest.approx(min(1.0, 5 * f.p_value))  # type: ignore[operator]
    # X is tested too: one-sided exact test on the 9 non-missing tail patients, share 4/94;
    # only a bound of its Bonferroni p is published
    x_p = 5 * stats.binomtest(1, 9, 4 / 94, alternative="greater").pvalue
    bound = sex.groups["X"].p_value_bound
    assert bound is None if x_p >= 0.1 else x_p < bound <= 10 * x_p
    # pooled: missing (6, 1 in the tail) with X (4, 1): no separate figure of either
    assert (sex.other_patients, sex.other_tail_patients, sex.several_values) == (10, 2, None)
    assert f.tail_rate == pytest.approx(6 / 30)
    assert f.max_patient_auc == 0.95 and m.max_patient_auc == 0.95
    assert sex.chi_square == pytest.approx(6.25)  # 3.333^2 / 2.667 + 3.333^2 / 5.333
    assert sex.df == 1
    assert sex.p_value == pytest.approx(stats.chi2.sf(6.25, 1), rel=1e-9)
    assert sex.p_value_bonferroni == pytest.approx(min(1.0, 2 * sex.p_value))  # type: ignore[operator]


def test_missing_and_too_small_groups_are_untested_and_small_ones_suppressed() -> None:
    auc, columns = _hand_pool()
    result = analyse_subgroups(auc, columns, tail_quantile=0.9, min_group_size=5)
    groups = result.columns["sex"].groups
    assert groups[MISSING].status is GroupStatus.MISSING
    assert groups[MISSING].size is None  # pooled with X: its size would give X's away
    assert groups["X"].status is GroupStatus.TOO_SMALL
    assert groups["X"].size is None  # suppressed: a count of 4 can single patients out
    for name in (MISSING, "X"):
        for figure in FIGURES:
            assert getattr(groups[name], figure) is None, (name, figure)
    relaxed = analyse_subgroups(auc, columns, tail_quantile=0.9, min_group_size=4)
    x = relaxed.columns["sex"].groups["X"]
    assert relaxed.columns["sex"].groups[MISSING].size == 6  # nothing hidden: published
    assert x.status is GroupStatus.TESTED
    assert x.expected == pytest.approx(9 * 4 / 94)
    assert relaxed.columns["sex"].df == 2


def test_patient_with_many_records_counts_once_and_a_one_patient_group_is_suppressed() -> None:
    # Patient 0 has 20 records in the rare group R: by records R would have 20 members and
    # be tested at min_group_size 20; by patients it is one patient and is suppressed.
    n_other = 400
    record_patient = np.r_[np.zeros(20, dtype=np.intp), np.arange(1, n_other + 1)]
    record_values = ["R"] * 20 + ["A", "B"] * (n_other // 2)
    per_patient = patient_values(record_values, record_patient, n_other + 1)
    assert per_patient.count("R") == 1
    auc = np.r_[0.999, np.linspace(0.5, 0.8, n_other)]
    result = analyse_subgroups(auc, {"g": per_patient}, tail_quantile=0.99, min_group_size=20)
    r = result.columns["g"].groups["R"]
    assert r.status is GroupStatus.TOO_SMALL
    assert r.max_patient_auc is None and r.size is None and r.observed is None
    assert result.tail_patients == math.ceil(0.01 * (n_other + 1)) == 5


def test_patients_with_several_values_are_reported_and_excluded() -> None:
    auc = np.r_[np.full(90, 0.55), np.full(10, 0.95)]
    column = ("a",) * 40 + (SEVERAL,) * 10 + ("b",) * 40 + ("b",) * 10
    result = analyse_subgroups(auc, {"c": column}, tail_quantile=0.9, min_group_size=1)
    col = result.columns["c"]
    assert col.several_values == 10
    assert col.groups[SEVERAL].status is GroupStatus.SEVERAL_VALUES
    assert col.groups[SEVERAL].observed is None
    assert col.tested_patients == 90 and col.tail_patients == 10


def test_missing_is_never_tested_even_when_large() -> None:
    auc = np.r_[np.full(90, 0.55), np.full(10, 0.95)]
    column = (MISSING,) * 60 + ("a",) * 20 + ("b",) * 20
    col = analyse_subgroups(auc, {"c": column}, tail_quantile=0.9, min_group_size=1).columns["c"]
    assert col.groups[MISSING].status is GroupStatus.MISSING
    assert col.groups["b"].observed == 10
    assert col.groups["b"].expected == pytest.approx(5.0)
    assert col.chi_square == pytest.approx(10.0)


def test_bonferroni_across_testable_columns_and_groups() -> None:
    auc, columns = _hand_pool()
    columns = {**columns, "all_missing": (MISSING,) * 100, "one_group": ("only",) * 100}
    result = analyse_subgroups(auc, columns, tail_quantile=0.9, min_group_size=5)
    for untestable in ("all_missing", "one_group"):
        col = result.columns[untestable]
        assert col.chi_square is None and col.p_value_bonferroni is None and col.df is None
    sex, site = result.columns["sex"], result.columns["site"]
    assert sex.p_value_bonferroni == pytest.approx(min(1.0, 2 * sex.p_value))  # type: ignore[operator]
    assert site.chi_square == pytest.approx(0.0) and site.p_value_bonferroni == 1.0
    # Six tested groups in all (F, M, X, A, B, only): each group's p is adjusted by 6.
    assert result.tested_groups == 6
    f = sex.groups["F"]
    assert f.p_value_adjusted == pytest.approx(min(1.0, 6 * f.p_value))  # type: ignore[operator]


def test_chi_square_and_binomial_match_scipy_on_random_columns() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    auc = 0.5 + 0.5 * rng.beta(1, 5, n)
    values = rng.choice(
        ["a", "b", "c", "d", "e", MISSING], size=n, p=[0.3, 0.3, 0.2, 0.1, 0.095, 0.005]
    )
    values[:8] = "tiny"
    result = analyse_subgroups(auc, {"c": tuple(values)}, tail_quantile=0.95, min_group_size=20)
    in_tail = auc >= np.sort(auc)[-150]
    names = ["a", "b", "c", "d", "e"]
    sizes = np.array([np.sum(values == v) for v in names])
    observed = np.array([np.sum(in_tail & (values == v)) for v in names])
    expected = observed.sum() * sizes / sizes.sum()
    chi = stats.chisquare(observed, expected)
    col = result.columns["c"]
    assert col.chi_square == pytest.approx(chi.statistic, rel=1e-12)
    assert col.p_value == pytest.approx(chi.pvalue, rel=1e-10)
    assert col.df == 4
    for v, size, o, e in zip(names, sizes, observed, expected, strict=True):
        g = col.groups[v]
        assert (g.size, g.observed) == (size, o)
        assert g.expected == pytest.approx(e, rel=1e-12)
        p = stats.binomtest(int(o), int(observed.sum()), size / sizes.sum()).pvalue
        assert g.p_value == pytest.approx(p, rel=1e-10)
        assert g.max_patient_auc == pytest.approx(auc[values == v].max())
    assert col.groups["tiny"].status is GroupStatus.TOO_SMALL


def test_planted_over_represented_group_is_detected() -> None:
    rng = np.random.default_rng(2)
    n = 5000
    auc = 0.5 + 0.3 * rng.beta(1, 6, n)
    diagnosis = np.array(["common"] * 4000 + ["other"] * 900 + ["rare"] * 100)
    rare = diagnosis == "rare"
    auc[rare] = 0.5 + 0.5 * rng.beta(4, 2, rare.sum())
    result = analyse_subgroups(
        auc,
        {"diagnosis": tuple(diagnosis), "noise": tuple(rng.choice(["x", "y"], n))},
        tail_quantile=0.99,
        min_group_size=20,
    )
    g = result.columns["diagnosis"].groups["rare"]
    assert result.tail_patients == 50
    assert g.observed is not None and g.observed >= 40
    assert g.expected == pytest.approx(50 * 100 / 5000)
    assert g.relative_change is not None and g.relative_change > 20
    assert g.p_value_adjusted is not None and g.p_value_adjusted < 1e-20
    assert result.columns["noise"].p_value_bonferroni > 0.01  # type: ignore[operator]


@st.composite
def _subgroup_case(draw: st.DrawFn) -> tuple[np.ndarray, list[str], np.ndarray]:
    n = draw(st.integers(5, 60))
    auc = draw(st.lists(st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.95]), min_size=n, max_size=n))
    labels = draw(st.lists(st.sampled_from(["a", "b", "c", MISSING]), min_size=n, max_size=n))
    perm = draw(st.permutations(range(n)))
    return np.array(auc), labels, np.array(perm, dtype=np.intp)


@settings(max_examples=50, deadline=None)
@given(_subgroup_case(), st.integers(1, 10))
def test_analysis_is_order_invariant_and_consistent(
    case: tuple[np.ndarray, list[str], np.ndarray], min_group_size: int
) -> None:
    auc, labels, perm = case
    kwargs = {"tail_quantile": 0.8, "min_group_size": min_group_size}
    base = analyse_subgroups(auc, {"c": labels}, **kwargs)
    permuted = analyse_subgroups(auc[perm], {"c": [labels[i] for i in perm]}, **kwargs)
    assert permuted.tail_threshold == base.tail_threshold
    assert permuted.columns["c"].to_dict() == base.columns["c"].to_dict()
    groups = base.columns["c"].groups
    tested = [g for g in groups.values() if g.status is GroupStatus.TESTED]
    if tested:
        assert sum(g.expected for g in tested) == pytest.approx(  # type: ignore[misc]
            sum(g.observed for g in tested)  # type: ignore[misc]
        )
    for name, g in groups.items():
        size = labels.count(name)
        if name == MISSING:
            assert g.status is GroupStatus.MISSING
        elif size < min_group_size:
            assert g.status is GroupStatus.TOO_SMALL
        elif g.status is GroupStatus.SUPPRESSED:  # hidden to protect a smaller group
            assert any(h.status is GroupStatus.TOO_SMALL for h in groups.values())
        else:
            assert g.status is GroupStatus.TESTED and g.size == size


def test_a_rare_group_with_no_tested_patient_in_the_tail_has_no_evidence() -> None:
    """Hypothesis' case: the tail holds only patients with a missing value, so the exact
    test of the rare group has no tail to count in (n = 0); it states no bound and the
    analysis does not crash."""
    auc = np.array([0.5, 0.5, 0.5, 0.6, 0.5, 0.6, 0.5, 0.5, 0.5])
    labels = ["a", "a", "a", MISSING, "a", MISSING, "a", "a", "a"]
    result = analyse_subgroups(auc, {"c": labels}, tail_quantile=0.8, min_group_size=8)
    group = result.columns["c"].groups["a"]
    assert group.status is GroupStatus.TOO_SMALL and group.p_value_bound is None
    assert not group.significant_at(0.05, 1)
