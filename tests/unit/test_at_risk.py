"""The at-risk test: its p-values against SciPy, its size AT THE BOUNDARY and its power
against its own closed form, on Gaussian records whose true AUC is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from privacy_gate import audit, make_signals, records_from_columns
from privacy_gate.at_risk import (
    audit_power,
    count_pairs,
    detectable_auc,
    detection_power,
    patient_p_values,
    record_p_values,
)
from privacy_gate.config import parse_config
from privacy_gate.patients import benjamini_hochberg_count
from privacy_gate.record_stats import record_moments
from privacy_gate.render.markdown import render_markdown

N_EHR = 9105
BH_FIRST_STEP = 0.05 / N_EHR


def _records(
    true_auc: np.ndarray, n_in: int, n_out: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian scores (equal variances) whose record AUC is exactly ``true_auc``:
    OUT ~ N(0, 1), IN ~ N(sqrt(2) Phi^-1(A), 1). Rows ``[:n_in]`` are the IN models."""
    n = len(true_auc)
    scores = rng.standard_normal((n_in + n_out, n))
    scores[:n_in] += math.sqrt(2.0) * special.ndtri(true_auc)
    masks = np.zeros((n_in + n_out, n), dtype=bool)
    masks[:n_in] = True
    return scores, masks


def _p(true_auc: np.ndarray, n_in: int, n_out: int, seed: int, at_risk: float = 0.9) -> np.ndarray:
    scores, masks = _records(true_auc, n_in, n_out, np.random.default_rng(seed))
    return record_p_values(record_moments(scores, masks), at_risk)


# --------------------------------------------------------------------------- p-values


def _independent_p(x_in: np.ndarray, x_out: np.ndarray, at_risk: float) -> float:
    """The test written out from its definition, one record at a time."""
    n1, n2 = len(x_in), len(x_out)
    d0 = stats.norm.ppf(at_risk)
    v1, v2 = np.var(x_in, ddof=1), np.var(x_out, ddof=1)
    diff = np.mean(x_in) - np.mean(x_out)
    sp2 = ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)
    pooled = stats.nct.sf(
        diff / math.sqrt(sp2 * (1 / n1 + 1 / n2)),
        n1 + n2 - 2,
        math.sqrt(2) * d0 / math.sqrt(1 / n1 + 1 / n2),
    )
    se2 = v1 / n1 + v2 / n2
    df = se2**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    welch = stats.nct.sf(diff / math.sqrt(se2), df, d0 * math.sqrt(v1 + v2) / math.sqrt(se2))
    return float(max(pooled, welch))


@pytest.mark.parametrize(("n_models", "seed"), [(8, 0), (16, 1), (33, 2)])
def test_record_p_values_match_the_definition(n_models: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.normal(0.0, 1.0, (n_models, n)) * rng.uniform(0.3, 3.0, n)
    masks = rng.random((n_models, n)) < 0.5
    masks[:2], masks[2:4] = True, False  # at least two IN and two OUT per record
    scores = scores + 2.5 * masks * rng.random(n)  # some records leak
    got = record_p_values(record_moments(scores, masks), 0.8)
    for j in range(n):
        expected = _independent_p(scores[masks[:, j], j], scores[~masks[:, j], j], 0.8)
        assert got[j] == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_untestable_and_degenerate_records() -> None:
    masks = np.array([[True, True, True], [False, True, True], [False, False, False],
                      [False, False, False]])  # fmt: skip
    scores = np.array([[1.0, 5.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    p = record_p_values(record_moments(scores, masks), 0.9)
    assert p[0] == 1.0  # one IN score: no variance, no test
    assert p[1] < 1e-10  # constant IN 5, constant OUT 0: separated (t ~ 5e6, 2 df)
    assert p[2] > 0.5  # all scores equal: AUC 0.5, nowhere near at risk


def test_patient_p_value_is_bonferroni_over_its_records() -> None:
    p = np.array([0.001, 0.02, 0.5, 0.2, 0.9])
    index = np.array([0, 0, 0, 1, 2], dtype=np.intp)
    np.testing.assert_allclose(patient_p_values(p, index, 3), [0.003, 0.2, 0.9])
    assert patient_p_values(np.array([0.6, 0.7]), np.array([0, 0]), 1)[0] == 1.0


# --------------------------------------------------------------------------- size


@pytest.mark.parametrize(
    ("n_in", "n_out"),
    [(4, 4), (3, 5), (8, 8), (5, 11), (16, 16), (10, 22), (32, 32), (20, 44)],
)
def test_size_holds_at_the_boundary_per_record(n_in: int, n_out: int) -> None:
    # 200,000 records at exactly the at-risk AUC: rejections at alpha stay at or below alpha
    # (4 binomial standard errors of slack). The old z-test with the SE at the estimate
    # rejected about 1,500 times too often at the first Benjamini-Hochberg level.
    n = 200_000
    p = _p(np.full(n, 0.9), n_in, n_out, seed=n_in * 100 + n_out)
    for alpha in (0.05, 0.01, 1e-3):
        rejected = int(np.count_nonzero(p <= alpha))
        assert rejected <= n * alpha + 4 * math.sqrt(n * alpha), (alpha, rejected)


@pytest.mark.parametrize("n_models", [16, 32, 64])
@pytest.mark.parametrize("balanced", [True, False], ids=["balanced", "unbalanced"])
def test_fdr_holds_when_every_record_sits_at_the_boundary(n_models: int, balanced: bool) -> None:
    # All 3,000 patients exactly at the at-risk AUC: every discovery is false, so the FDR is
    # the chance of any discovery, at most 0.05 for valid p-values. 60 seeds each.
    n_in = n_models // 2 if balanced else n_models // 2 - n_models // 8
    n_patients, seeds = 3000, 60
    false_audits = 0
    for seed in range(seeds):
        p = _p(np.full(n_patients, 0.9), n_in, n_models - n_in, seed=seed)
        false_audits += benjamini_hochberg_count(p, 0.05) > 0
    # P(Binomial(60, 0.05) >= 9) < 0.01: a calibrated test fails this rarely.
    assert false_audits <= 8, false_audits


@pytest.mark.parametrize("seed", range(8))
def test_the_issue_example_has_no_false_discovery(seed: int) -> None:
    # 500 records at exactly AUC 0.90 and none above, K = 32, N = 9,105: the old test
    # reported 2-15 "confidently at risk" patients in 8 of 8 seeds.
    true_auc = np.r_[np.full(500, 0.9), np.full(N_EHR - 500, 0.5)]
    p = _p(true_auc, 16, 16, seed=seed)
    assert benjamini_hochberg_count(p, 0.05) == 0


def test_formula_size_is_at_most_alpha() -> None:
    for n_in, n_out in [(4, 4), (3, 5), (16, 16), (10, 22), (32, 32)]:
        for alpha in (0.05, 1e-3, BH_FIRST_STEP):
            size = float(detection_power(0.9, 0.9, n_in, n_out, alpha))
            assert size <= alpha * (1 + 1e-6)


# --------------------------------------------------------------------------- power


@pytest.mark.parametrize(
    ("true_auc", "n_in", "n_out", "alpha"),
    [
        (0.999, 16, 16, BH_FIRST_STEP),  # K = 32
        (0.99, 32, 32, BH_FIRST_STEP),  # K = 64
        (0.999, 10, 22, 1e-3),
        (0.995, 5, 11, 0.01),
    ],
)
def test_power_matches_its_closed_form(
    true_auc: float, n_in: int, n_out: int, alpha: float
) -> None:
    n = 40_000
    p = _p(np.full(n, true_auc), n_in, n_out, seed=int(true_auc * 1e4) + n_in)
    found = float(np.mean(p <= alpha))
    predicted = float(detection_power(true_auc, 0.9, n_in, n_out, alpha))
    assert 0.05 < predicted < 0.95  # a rate, not a certainty: the comparison means something
    assert found == pytest.approx(predicted, abs=4 * math.sqrt(predicted * (1 - predicted) / n))


def test_power_formula_against_the_one_dimensional_form_at_balanced_counts() -> None:
    # Balanced, equal variances: the pooled and Welch statistics coincide and the Welch
    # degrees of freedom depend only on B = v_in / (v_in + v_out) ~ Beta((h-1)/2, (h-1)/2),
    # independent of v_in + v_out: power = E_B[nct.sf(nct.isf(alpha, df(B), lam0), 2h-2, lam)].
    h, alpha, at_risk, true_auc = 16, 1e-4, 0.9, 0.995
    lam0 = stats.norm.ppf(at_risk) * math.sqrt(h)
    lam = stats.norm.ppf(true_auc) * math.sqrt(h)

    def integrand(b: float) -> float:
        df = (h - 1) / (b**2 + (1 - b) ** 2)
        crit = stats.nct.isf(alpha, df, lam0)
        return float(
            stats.nct.sf(crit, 2 * h - 2, lam) * stats.beta.pdf(b, (h - 1) / 2, (h - 1) / 2)
        )

    from scipy import integrate

    expected = integrate.quad(integrand, 0.0, 1.0, limit=200)[0]
    assert float(detection_power(true_auc, at_risk, h, h, alpha)) == pytest.approx(
        expected, abs=2e-4
    )


def test_detectable_auc_is_where_the_power_curve_crosses() -> None:
    for n_models in (32, 64, 128):
        h = n_models // 2
        auc = detectable_auc(0.9, h, h, BH_FIRST_STEP, 0.8)
        assert float(detection_power(auc, 0.9, h, h, BH_FIRST_STEP)) == pytest.approx(0.8, abs=1e-6)
    k64 = detectable_auc(0.9, 32, 32, BH_FIRST_STEP)
    k128 = detectable_auc(0.9, 64, 64, BH_FIRST_STEP)
    assert 0.9 < k128 < k64 < 0.999  # more reference models detect smaller exposures
    assert detectable_auc(0.9, 4, 4, BH_FIRST_STEP) == 1.0  # K = 8 cannot reach 80% at all


def test_audit_power_takes_the_least_favourable_counts() -> None:
    pairs = count_pairs(np.array([32, 32, 20]), np.array([32, 32, 44]))
    assert pairs == [[20, 44, 1], [32, 32, 2]]
    power = audit_power(pairs, 9105, at_risk_auc=0.9, fdr=0.05)
    assert (power.n_in, power.n_out) == (20, 44)
    assert power.alpha == pytest.approx(0.05 / 9105)
    assert power.detectable_auc == detectable_auc(0.9, 20, 44, 0.05 / 9105)
    assert power.detectable_auc > detectable_auc(0.9, 32, 32, 0.05 / 9105)


def test_a_patient_without_records_gets_p_one_not_nan() -> None:
    p = patient_p_values(np.array([0.01, 0.2]), np.array([0, 0]), 2)
    assert p.tolist() == [0.02, 1.0]


def test_power_is_stated_for_the_patient_with_the_most_records() -> None:
    """A 20-record patient's p-value is its smallest record p-value times 20, so one
    leaking record of it must reach alpha / 20: a higher detectable AUC, stated beside the
    one-record figure (DESIGN.md, "Power")."""
    pairs = [[16, 16, 400]]
    one = audit_power(pairs, 100, at_risk_auc=0.9, fdr=0.05)
    many = audit_power(pairs, 100, at_risk_auc=0.9, fdr=0.05, max_records=20)
    assert one.detectable_auc_max_records is None and one.max_records == 1
    assert many.detectable_auc == one.detectable_auc
    expected = detectable_auc(0.9, 16, 16, 0.05 / 100 / 20)
    assert many.detectable_auc_max_records == expected
    assert expected > one.detectable_auc
    # the power of the multi-record figure at the one-record figure's AUC is below 80%
    power = detection_power(one.detectable_auc, 0.9, 16, 16, 0.05 / 100 / 20)
    assert float(power) < 0.8 - 1e-6


def test_the_report_states_both_figures_for_multi_record_patients() -> None:
    rng = np.random.default_rng(4)
    k, n = 16, 120
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    patients = [f"p{i // 6}" if i < 60 else f"q{i}" for i in range(n)]  # ten 6-record patients
    signals = make_signals(rng.standard_normal((k, n)), masks)
    records = records_from_columns([f"r{i}" for i in range(n)], patients, {})
    policy = parse_config({"risk": {"null_replicates": 20}, "gate": {"max_patient_auc": 1.0}})
    result = audit(signals, records, policy)
    power = result.report.summary.power
    assert power.max_records == 6
    assert power.detectable_auc_max_records is not None
    assert power.detectable_auc_max_records > power.detectable_auc
    assert "a patient with 6 records" in render_markdown(result.report)
