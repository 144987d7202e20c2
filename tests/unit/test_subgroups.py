"""Subgroup over-representation in the tail, against hand computations and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy_gate.records import MISSING
from privacy_gate.subgroups import GroupStatus, analyse_subgroups, tail_mask

FIGURES = (
    "size",
    "observed",
    "expected",
    "relative_change",
    "pearson_residual",
    "p_value",
    "tail_rate",
    "max_patient_auc",
)

# --------------------------------------------------------------------------- tail


def test_tail_mask_is_strictly_above_the_quantile() -> None:
    rng = np.random.default_rng(0)
    auc = 0.5 + 0.5 * rng.random(1000)
    mask, threshold = tail_mask(auc, 0.99)
    ordered = np.sort(auc)
    # Linear interpolation at position 0.99 * 999 = 989.01.
    expected = ordered[989] + 0.01 * (ordered[990] - ordered[989])
    assert threshold == pytest.approx(expected, abs=1e-15)
    np.testing.assert_array_equal(mask, auc > threshold)
    assert mask.sum() == 10


def test_tail_mask_all_equal_is_empty() -> None:
    mask, threshold = tail_mask(np.full(500, 0.73), 0.99)
    assert threshold == 0.73
    assert not mask.any()


def test_tail_mask_never_splits_ties() -> None:
    # 20 records tie at the value where the quantile falls.
    auc = np.r_[np.linspace(0.5, 0.7, 80), np.full(20, 0.8), [0.9, 0.95]]
    for q in (0.8, 0.85, 0.9, 0.95, 0.98):
        mask, _ = tail_mask(auc, q)
        for value in np.unique(auc):
            members = mask[auc == value]
            assert members.all() or not members.any()
    # At the 0.9 quantile the tie at 0.8 is the threshold itself: all of it stays out.
    mask, threshold = tail_mask(auc, 0.9)
    assert threshold == 0.8
    assert mask.sum() == 2


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from([0.5, 0.55, 0.6, 0.75, 0.9, 0.99]), min_size=1, max_size=60),
    st.floats(0.0, 1.0),
    st.data(),
)
def test_tail_mask_is_order_invariant(values: list[float], q: float, data: st.DataObject) -> None:
    auc = np.array(values)
    perm = np.array(data.draw(st.permutations(range(len(values)))), dtype=np.intp)
    mask, threshold = tail_mask(auc, q)
    mask_p, threshold_p = tail_mask(auc[perm], q)
    assert threshold_p == threshold
    np.testing.assert_array_equal(mask_p, mask[perm])
    for value in np.unique(auc):
        members = mask[auc == value]
        assert members.all() or not members.any()


# --------------------------------------------------------------------------- by hand


def _hand_pool() -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """100 records; the 10 with AUC 0.95 form the tail at the 0.9 quantile.

    sex: F 30 (6 in the tail), M 60 (2), <missing> 6 (1), X 4 (1, too small at 5).
    site: A 50 (5 in the tail), B 50 (5).
    """
    auc = np.full(100, 0.55)
    tail = [0, 1, 2, 3, 4, 5, 30, 31, 90, 96]
    auc[tail] = 0.95
    auc[[6, 7]] = 0.6  # non-tail records of F with a higher AUC
    sex = ["F"] * 30 + ["M"] * 60 + [MISSING] * 6 + ["X"] * 4
    # site: A holds the first five tail records and 45 others, B the rest.
    non_tail = [i for i in range(100) if i not in tail]
    site = ["B"] * 100
    for i in tail[:5] + non_tail[:45]:
        site[i] = "A"
    patient_auc = auc.copy()
    patient_auc[10] = 0.97  # a non-tail F record whose patient has a higher AUC
    return auc, patient_auc, {"sex": sex, "site": site}


def test_per_group_figures_by_hand() -> None:
    auc, patient_auc, columns = _hand_pool()
    result = analyse_subgroups(auc, patient_auc, columns, tail_quantile=0.9, min_group_size=5)
    assert result.tail_records == 10
    assert result.tail_quantile == 0.9
    assert 0.6 < result.tail_threshold < 0.95
    sex = result.columns["sex"]
    f, m = sex.groups["F"], sex.groups["M"]
    assert f.status is GroupStatus.TESTED and m.status is GroupStatus.TESTED
    # Tested: F 30 + M 60 = 90 records; 8 tail records among them.
    assert (f.size, f.observed, m.size, m.observed) == (30, 6, 60, 2)
    assert f.expected == pytest.approx(8 * 30 / 90)
    assert m.expected == pytest.approx(8 * 60 / 90)
    assert f.relative_change == pytest.approx((6 - 8 / 3) / (8 / 3))  # 1.25
    assert f.relative_change == pytest.approx(1.25)
    assert m.relative_change == pytest.approx(-0.625)
    assert f.pearson_residual == pytest.approx((6 - 8 / 3) / math.sqrt(8 / 3))
    assert m.pearson_residual == pytest.approx((2 - 16 / 3) / math.sqrt(16 / 3))
    assert f.p_value == pytest.approx(stats.binomtest(6, 8, 1 / 3).pvalue, rel=1e-12)
    assert m.p_value == pytest.approx(stats.binomtest(2, 8, 2 / 3).pvalue, rel=1e-12)
    assert f.tail_rate == pytest.approx(6 / 30)
    assert m.tail_rate == pytest.approx(2 / 60)
    assert f.max_patient_auc == 0.97
    assert m.max_patient_auc == 0.95
    # Chi-square goodness of fit by hand: 3.333^2 / 2.667 + 3.333^2 / 5.333 = 6.25, df 1.
    assert sex.chi_square == pytest.approx(6.25)
    assert sex.df == 1
    assert sex.p_value == pytest.approx(stats.chi2.sf(6.25, 1), rel=1e-9)
    scipy_chi = stats.chisquare([6, 2], [8 / 3, 16 / 3])
    assert sex.chi_square == pytest.approx(scipy_chi.statistic, rel=1e-12)
    assert sex.p_value == pytest.approx(scipy_chi.pvalue, rel=1e-12)


def test_missing_and_too_small_groups_are_untested() -> None:
    auc, patient_auc, columns = _hand_pool()
    result = analyse_subgroups(auc, patient_auc, columns, tail_quantile=0.9, min_group_size=5)
    groups = result.columns["sex"].groups
    assert set(groups) == {"F", "M", MISSING, "X"}
    assert groups[MISSING].status is GroupStatus.MISSING
    assert groups["X"].status is GroupStatus.TOO_SMALL
    for name in (MISSING, "X"):
        for figure in FIGURES:
            assert getattr(groups[name], figure) is None, (name, figure)
        as_dict = groups[name].to_dict()
        assert all(as_dict[figure] is None for figure in FIGURES)
    # Their tail records (one each) are not in the expected counts.
    tested = [g for g in groups.values() if g.status is GroupStatus.TESTED]
    assert sum(g.expected for g in tested) == pytest.approx(8)  # type: ignore[misc]
    assert sum(g.observed for g in tested) == 8  # type: ignore[misc]
    # A larger group is tested once min_group_size allows it, and shares renormalise.
    relaxed = analyse_subgroups(auc, patient_auc, columns, tail_quantile=0.9, min_group_size=4)
    x = relaxed.columns["sex"].groups["X"]
    assert x.status is GroupStatus.TESTED
    assert x.expected == pytest.approx(9 * 4 / 94)
    assert relaxed.columns["sex"].df == 2
    assert relaxed.columns["sex"].groups[MISSING].status is GroupStatus.MISSING


def test_missing_is_never_tested_even_when_large() -> None:
    auc = np.r_[np.full(90, 0.55), np.full(10, 0.95)]
    column = [MISSING] * 60 + ["a"] * 20 + ["b"] * 20
    result = analyse_subgroups(auc, auc, {"c": column}, tail_quantile=0.9, min_group_size=1)
    col = result.columns["c"]
    assert col.groups[MISSING].status is GroupStatus.MISSING
    assert col.groups[MISSING].observed is None
    # All 10 tail records are in b: a 0 / b 10 against 5 / 5.
    assert col.groups["b"].observed == 10
    assert col.groups["b"].expected == pytest.approx(5.0)
    assert col.chi_square == pytest.approx(10.0)


def test_bonferroni_across_testable_columns() -> None:
    auc, patient_auc, columns = _hand_pool()
    columns = {
        **columns,
        "all_missing": [MISSING] * 100,
        "one_group": ["only"] * 100,
    }
    result = analyse_subgroups(auc, patient_auc, columns, tail_quantile=0.9, min_group_size=5)
    sex, site = result.columns["sex"], result.columns["site"]
    # Two columns have a test; the others have none and are not counted.
    for untestable in ("all_missing", "one_group"):
        col = result.columns[untestable]
        assert col.chi_square is None and col.p_value is None and col.p_value_bonferroni is None
        assert col.df is None
    assert sex.p_value_bonferroni == pytest.approx(min(1.0, 2 * sex.p_value))  # type: ignore[operator]
    assert site.p_value_bonferroni == pytest.approx(min(1.0, 2 * site.p_value))  # type: ignore[operator]
    # site: 5 of 10 in A, 5 in B against 5 / 5: no deviation at all.
    assert site.chi_square == pytest.approx(0.0)
    assert site.p_value == pytest.approx(1.0)
    assert site.p_value_bonferroni == 1.0
    # The single-group column still reports its group: binomial p with share 1 is 1.
    only = result.columns["one_group"].groups["only"]
    assert only.status is GroupStatus.TESTED
    assert only.observed == 10 and only.expected == pytest.approx(10.0)
    assert only.p_value == pytest.approx(1.0)


def test_empty_tail_gives_no_tests() -> None:
    auc = np.full(50, 0.6)
    result = analyse_subgroups(
        auc, auc, {"c": ["a"] * 25 + ["b"] * 25}, tail_quantile=0.99, min_group_size=5
    )
    assert result.tail_records == 0
    col = result.columns["c"]
    assert col.chi_square is None and col.p_value_bonferroni is None
    a = col.groups["a"]
    assert a.observed == 0 and a.expected == 0.0
    assert a.relative_change is None and a.pearson_residual is None and a.p_value is None


def test_chi_square_and_binomial_match_scipy_on_random_columns() -> None:
    rng = np.random.default_rng(1)
    n = 3000
    auc = 0.5 + 0.5 * rng.beta(1, 5, n)
    values = rng.choice(
        ["a", "b", "c", "d", "e", MISSING], size=n, p=[0.3, 0.3, 0.2, 0.1, 0.095, 0.005]
    )
    values[:8] = "tiny"
    result = analyse_subgroups(auc, auc, {"c": list(values)}, tail_quantile=0.95, min_group_size=20)
    in_tail = auc > np.quantile(auc, 0.95)
    names = ["a", "b", "c", "d", "e"]
    sizes = np.array([np.sum(values == v) for v in names])
    observed = np.array([np.sum(in_tail & (values == v)) for v in names])
    expected = observed.sum() * sizes / sizes.sum()
    chi = stats.chisquare(observed, expected)
    col = result.columns["c"]
    assert col.chi_square == pytest.approx(chi.statistic, rel=1e-12)
    assert col.p_value == pytest.approx(chi.pvalue, rel=1e-10)
    assert col.df == 4
    assert col.p_value_bonferroni == pytest.approx(chi.pvalue, rel=1e-10)
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
    auc[rare] = 0.5 + 0.5 * rng.beta(4, 2, rare.sum())  # the exposed rare disease
    noise_column = list(rng.choice(["x", "y"], n))
    result = analyse_subgroups(
        auc,
        auc,
        {"diagnosis": list(diagnosis), "noise": noise_column},
        tail_quantile=0.99,
        min_group_size=20,
    )
    col = result.columns["diagnosis"]
    g = col.groups["rare"]
    assert result.tail_records == 50
    assert g.observed is not None and g.observed >= 40
    assert g.expected == pytest.approx(50 * 100 / 5000)
    assert g.relative_change is not None and g.relative_change > 20
    assert g.pearson_residual is not None and g.pearson_residual > 10
    assert g.p_value is not None and g.p_value < 1e-20
    assert col.p_value_bonferroni is not None and col.p_value_bonferroni < 1e-20
    assert col.groups["common"].relative_change < 0  # type: ignore[operator]
    # The column unrelated to exposure is not flagged.
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
    base = analyse_subgroups(auc, auc, {"c": labels}, **kwargs)
    permuted = analyse_subgroups(auc[perm], auc[perm], {"c": [labels[i] for i in perm]}, **kwargs)
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
        else:
            assert g.status is GroupStatus.TESTED and g.size == size
