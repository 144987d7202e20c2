"""The at-risk test: its p-values against SciPy, its size AT THE BOUNDARY and its power
against its own closed form, on Gaussian records whose true AUC is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from privacy_gate import audit, make_signals, records_from_columns
from privacy_gate.at_risk import (
    EXACT_BELOW,
    audit_power,
    berger_boos_beta,
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
BETA_EHR = berger_boos_beta(0.05, N_EHR)


def _records(
    true_auc: np.ndarray, n_in: int, n_out: int, rng: np.random.Generator, sd_ratio: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian scores whose record AUC is exactly ``true_auc``: OUT ~ N(0, 1),
    IN ~ N(sqrt(1 + s^2) Phi^-1(A), s^2) with ``s = sd_ratio``. Rows ``[:n_in]`` are IN."""
    n = len(true_auc)
    scores = rng.standard_normal((n_in + n_out, n))
    scores[:n_in] *= sd_ratio
    scores[:n_in] += math.sqrt(1.0 + sd_ratio**2) * special.ndtri(true_auc)
    masks = np.zeros((n_in + n_out, n), dtype=bool)
    masks[:n_in] = True
    return scores, masks


def _p(
    true_auc: np.ndarray, n_in: int, n_out: int, seed: int, at_risk: float = 0.9,
    beta: float = BETA_EHR,
) -> np.ndarray:  # fmt: skip
    scores, masks = _records(true_auc, n_in, n_out, np.random.default_rng(seed))
    return record_p_values(record_moments(scores, masks), at_risk, beta)


# --------------------------------------------------------------------------- p-values


def _p_at_known_ratio(t: float, r: float, n1: int, n2: int, d0: float) -> float:
    """P(T >= t) at the boundary for the Welch statistic T at variance ratio r, as a
    two-dimensional integral over the chi-square variances (the implementation uses a
    one-dimensional form): T >= t iff Z >= t sqrt(W) / sd - lambda."""
    from scipy import integrate

    f1, f2 = n1 - 1, n2 - 1
    sd = math.sqrt(r / n1 + 1 / n2)
    lam = d0 * math.sqrt(r + 1) / sd

    def inner(x2: float, x1: float) -> float:
        w = r * x1 / (f1 * n1) + x2 / (f2 * n2)
        tail = stats.norm.sf(t * math.sqrt(w) / sd - lam)
        return float(tail * stats.chi2.pdf(x1, f1) * stats.chi2.pdf(x2, f2))

    hi1, hi2 = stats.chi2.isf(1e-14, f1), stats.chi2.isf(1e-14, f2)
    return float(integrate.dblquad(inner, 0, hi1, 0, hi2, epsabs=1e-15, epsrel=1e-7)[0])


def _independent_p(
    x_in: np.ndarray, x_out: np.ndarray, at_risk: float, beta: float, points: int = 17
) -> float:
    """The Berger-Boos p-value written out from its definition, one record at a time:
    the exact p-value at a known ratio by quadrature over B ~ Beta, its supremum over a
    finer grid (``points``) of the F interval of the ratio, plus beta; ``points=1``: the
    lower bound at the sample ratio alone."""
    from scipy import integrate

    n1, n2 = len(x_in), len(x_out)
    f1, f2 = n1 - 1, n2 - 1
    d0 = stats.norm.ppf(at_risk)
    v1, v2 = np.var(x_in, ddof=1), np.var(x_out, ddof=1)
    t = (np.mean(x_in) - np.mean(x_out)) / math.sqrt(v1 / n1 + v2 / n2)

    def p_at(r: float) -> float:
        sd = math.sqrt(r / n1 + 1 / n2)
        lam = d0 * math.sqrt(r + 1) / sd

        def integrand(b: float) -> float:
            c = r * b / (f1 * n1) + (1 - b) / (f2 * n2)
            x = t * math.sqrt((f1 + f2) * c) / sd
            return float(stats.nct.sf(x, f1 + f2, lam) * stats.beta.pdf(b, f1 / 2, f2 / 2))

        return float(integrate.quad(integrand, 0, 1, epsabs=1e-15, epsrel=1e-9, limit=100)[0])

    ratio = v1 / v2
    if points == 1:
        return min(1.0, p_at(ratio) + beta)
    lo = ratio / stats.f.isf(beta / 2, f1, f2)
    hi = ratio / stats.f.ppf(beta / 2, f1, f2)
    return min(1.0, max(p_at(r) for r in np.geomspace(lo, hi, points)) + beta)


KNOWN_RATIO_CASES = [(4.0, 1.0, 8, 8), (7.0, 9.0, 8, 8), (9.0, 0.2, 5, 11), (5.0, 3.0, 16, 16)]


@pytest.mark.slow  # seconds of Monte Carlo or numerics: the full run (CI), not the fast lane
@pytest.mark.parametrize(("t", "r", "n1", "n2"), KNOWN_RATIO_CASES)
def test_the_exact_p_value_at_a_known_ratio_matches_a_double_integral(
    t: float, r: float, n1: int, n2: int
) -> None:
    from privacy_gate.at_risk import _p_at_ratio

    d0 = float(stats.norm.ppf(0.9))
    got = float(_p_at_ratio(np.array(t), np.array(r), n1, n2, d0))
    assert got == pytest.approx(_p_at_known_ratio(t, r, n1, n2, d0), rel=1e-5, abs=1e-14)


def test_at_equal_variances_and_counts_the_known_ratio_p_value_is_the_pooled_t_test() -> None:
    from privacy_gate.at_risk import _p_at_ratio

    d0, h = float(stats.norm.ppf(0.9)), 16
    t = np.linspace(1.0, 14.0, 9)
    pooled = stats.nct.sf(t, 2 * h - 2, d0 * math.sqrt(h))  # balanced: Welch T = pooled T
    np.testing.assert_allclose(_p_at_ratio(t, np.ones_like(t), h, h, d0), pooled, rtol=1e-9)


@pytest.mark.parametrize(("n_models", "seed"), [(12, 0), (16, 1), (33, 2)])
def test_record_p_values_match_the_definition(n_models: int, seed: int) -> None:
    # At least 4 IN and 4 OUT: with 1 degree of freedom on a side the Beta weight is
    # singular and the reference quadratures themselves disagree in the 4th digit.
    rng = np.random.default_rng(seed)
    n = 24
    scores = rng.normal(0.0, 1.0, (n_models, n)) * rng.uniform(0.3, 3.0, n)
    masks = rng.random((n_models, n)) < 0.5
    masks[:4], masks[4:8] = True, False
    scores = scores + 4.0 * masks * rng.random(n)  # some records leak
    beta = 1e-4
    got = record_p_values(record_moments(scores, masks), 0.8, beta)
    small = 0
    for j in range(n):
        x_in, x_out = scores[masks[:, j], j], scores[~masks[:, j], j]
        if got[j] < 1.0:  # exact up to EXACT_BELOW
            assert got[j] == pytest.approx(_independent_p(x_in, x_out, 0.8, beta), rel=1e-5), j
            small += 1
        else:  # reported as 1 only when the exact value is above EXACT_BELOW
            exact = _independent_p(x_in, x_out, 0.8, beta, points=1)  # a lower bound
            if exact <= EXACT_BELOW:
                exact = _independent_p(x_in, x_out, 0.8, beta)
            assert exact > EXACT_BELOW - 1e-9, j
    assert small >= 3  # the comparison covered small p-values, not only the 1s


@pytest.mark.slow  # seconds of Monte Carlo or numerics: the full run (CI), not the fast lane
def test_the_supremum_lies_at_an_interval_endpoint_where_it_matters() -> None:
    """Where p <= 0.5 the exact p-value over the ratio interval peaks at an endpoint, so
    the two endpoints find the supremum a 120-point grid finds."""
    from privacy_gate.at_risk import _p_at_ratio, _ratio_grid

    cases = [(8, 8, 0.9, 1e-6), (4, 12, 0.8, 1e-3), (16, 16, 0.97, 1e-8), (20, 44, 0.9, 1e-6),
             (32, 32, 0.8, 1e-8), (64, 64, 0.9, 1e-7), (12, 4, 0.9, 1e-4)]  # fmt: skip
    for n1, n2, at_risk, beta in cases:
        d0 = float(stats.norm.ppf(at_risk))
        t = np.geomspace(0.5, 60.0, 30)
        for ratio in (0.05, 0.4, 1.0, 2.5, 20.0):
            grid = _ratio_grid(np.full(t.shape, ratio), n1, n2, beta)
            coarse = _p_at_ratio(t[:, None], grid, n1, n2, d0).max(axis=1)
            fine_r = np.geomspace(grid[0, 0], grid[0, -1], 120)
            fine = _p_at_ratio(t[:, None], np.broadcast_to(fine_r, (len(t), 120)), n1, n2, d0)
            matters = coarse <= EXACT_BELOW
            np.testing.assert_allclose(coarse[matters], fine.max(axis=1)[matters], rtol=1e-9)


def test_untestable_and_degenerate_records() -> None:
    masks = np.array([[True, True, True], [False, True, True], [False, False, False],
                      [False, False, False]])  # fmt: skip
    scores = np.array([[1.0, 5.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    p = record_p_values(record_moments(scores, masks), 0.9, 1e-12)
    assert p[0] == 1.0  # one IN score: no variance, no test
    assert 1e-12 <= p[1] < 1e-9  # constant IN 5, OUT 0: separated (t ~ 5e6, 1 df a side)
    assert p[2] > 0.5  # all scores equal: AUC 0.5, nowhere near at risk
    for beta in (0.0, 0.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            record_p_values(record_moments(scores, masks), 0.9, beta)


def test_patient_p_value_is_bonferroni_over_its_records() -> None:
    p = np.array([0.001, 0.02, 0.5, 0.2, 0.9])
    index = np.array([0, 0, 0, 1, 2], dtype=np.intp)
    np.testing.assert_allclose(patient_p_values(p, index, 3), [0.003, 0.2, 0.9])
    assert patient_p_values(np.array([0.6, 0.7]), np.array([0, 0]), 1)[0] == 1.0


# --------------------------------------------------------------------------- size


SD_RATIOS = (1 / 3, 1 / 1.7, 1.0, 1.7, 3.0)


@pytest.mark.slow
@pytest.mark.parametrize("sd_ratio", [1 / 3, 3.0])
@pytest.mark.parametrize(("n_in", "n_out"), [(16, 16), (10, 22)])
def test_size_holds_at_the_boundary_per_record(n_in: int, n_out: int, sd_ratio: float) -> None:
    # 12,000 records at exactly the at-risk AUC, IN/OUT SDs in the given ratio: rejections
    # at alpha stay at or below alpha (4 binomial standard errors of slack). The old z-test
    # with the SE at the estimate rejected about 1,500 times too often at BH's first level.
    n = 12_000
    seed = n_in * 100 + n_out + int(sd_ratio * 10)
    scores, masks = _records(np.full(n, 0.9), n_in, n_out, np.random.default_rng(seed), sd_ratio)
    p = record_p_values(record_moments(scores, masks), 0.9, 1e-6)
    for alpha in (0.05, 0.01, 1e-3):
        rejected = int(np.count_nonzero(p <= alpha))
        assert rejected <= n * alpha + 4 * math.sqrt(n * alpha), (alpha, rejected)


def _boundary_audit_discovers(
    n_models: int, sd_ratio: float, n_patients: int, rng: np.random.Generator
) -> bool:
    """One audit through the public `audit` path whose every record sits exactly at the
    at-risk AUC (IN SD = ``sd_ratio`` x OUT SD): True when it reports a patient at risk."""
    masks = np.argsort(rng.random((n_models, n_patients)), axis=0) < n_models // 2
    scores = rng.standard_normal((n_models, n_patients)) * np.where(masks, sd_ratio, 1.0)
    scores += masks * special.ndtri(0.9) * math.sqrt(sd_ratio**2 + 1.0)
    ids = [f"r{i}" for i in range(n_patients)]
    records = records_from_columns(ids, ids, {})
    policy = parse_config({"risk": {"null_replicates": 20}, "gate": {"max_patients_at_risk": 0}})
    return audit(make_signals(scores, masks), records, policy).report.summary.patients_at_risk > 0


@pytest.mark.slow
def test_fdr_holds_at_the_boundary_for_every_variance_ratio() -> None:
    """Every patient at the boundary, so any discovery is false and the FDR is the share
    of audits with one. SD ratios 1/3 to 3, K = 16, 32, 64, 40 audits of 200 patients each.
    Welch's estimated df gave 0.03-0.25 (0.25 at SD ratio 3, K = 16); this test at most
    0.035 (200 audits of 500 patients per cell, README)."""
    replicates, n_patients, counts = 40, 200, {}
    for sd_ratio in SD_RATIOS:
        for n_models in (16, 32, 64):
            rng = np.random.default_rng([n_models, int(sd_ratio * 1000)])
            counts[(sd_ratio, n_models)] = sum(
                _boundary_audit_discovers(n_models, sd_ratio, n_patients, rng)
                for _ in range(replicates)
            )
    # per cell: P(Binomial(40, 0.05) >= 8) < 0.004; pooled over the 15 cells (600
    # audits): at most the nominal 30 plus 2.33 standard errors.
    assert max(counts.values()) <= 7, counts
    total = sum(counts.values())
    assert total <= 0.05 * 600 + 2.33 * math.sqrt(600 * 0.05 * 0.95), counts


@pytest.mark.parametrize("seed", range(8))
def test_the_issue_example_has_no_false_discovery(seed: int) -> None:
    # 500 records at exactly AUC 0.90 and none above, K = 32, N = 9,105: the old test
    # reported 2-15 "confidently at risk" patients in 8 of 8 seeds.
    true_auc = np.r_[np.full(500, 0.9), np.full(N_EHR - 500, 0.5)]
    p = _p(true_auc, 16, 16, seed=seed)
    assert benjamini_hochberg_count(p, 0.05) == 0


@pytest.mark.slow  # seconds of Monte Carlo or numerics: the full run (CI), not the fast lane
def test_formula_size_is_at_most_alpha() -> None:
    for n_in, n_out in [(4, 4), (3, 5), (16, 16), (10, 22), (32, 32)]:
        for alpha in (0.05, 1e-3, BH_FIRST_STEP):
            size = float(detection_power(0.9, 0.9, n_in, n_out, alpha))
            assert size <= alpha * (1 + 1e-6)


# --------------------------------------------------------------------------- power


@pytest.mark.parametrize(
    ("true_auc", "n_in", "n_out", "alpha", "sd_ratio"),
    [
        (0.99999, 16, 16, BH_FIRST_STEP, 1.0),  # K = 32
        (0.995, 32, 32, BH_FIRST_STEP, 1.0),  # K = 64
        (0.995, 32, 32, BH_FIRST_STEP, 0.7),  # K = 64, the EHR example's SD ratios
        (0.999, 10, 22, 1e-3, 1.0),
        (0.998, 16, 16, 1e-3, 2.0),
    ],
)
def test_power_matches_its_closed_form(
    true_auc: float, n_in: int, n_out: int, alpha: float, sd_ratio: float
) -> None:
    # Monte Carlo of the test itself against the power integral, 8,000 records each.
    n, beta = 8_000, 0.1 * alpha
    rng = np.random.default_rng(int(true_auc * 1e4) + n_in + int(sd_ratio * 10))
    scores, masks = _records(np.full(n, true_auc), n_in, n_out, rng, sd_ratio)
    found = float(np.mean(record_p_values(record_moments(scores, masks), 0.9, beta) <= alpha))
    predicted = float(
        detection_power(true_auc, 0.9, n_in, n_out, alpha, beta=beta,
                        variance_ratio=sd_ratio**2)
    )  # fmt: skip
    assert 0.05 < predicted < 0.95  # a rate, not a certainty: the comparison means something
    assert found == pytest.approx(predicted, abs=4 * math.sqrt(predicted * (1 - predicted) / n))


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
    one-record figure (docs/statistics.md, "Power")."""
    pairs = [[16, 16, 400]]
    one = audit_power(pairs, 100, at_risk_auc=0.9, fdr=0.05)
    many = audit_power(pairs, 100, at_risk_auc=0.9, fdr=0.05, max_records=20)
    assert one.detectable_auc_max_records is None and one.max_records == 1
    assert many.beta == berger_boos_beta(0.05, 100, 20) == one.beta / 20
    assert many.detectable_auc == detectable_auc(0.9, 16, 16, 0.05 / 100, beta=many.beta)
    expected = detectable_auc(0.9, 16, 16, 0.05 / 100 / 20, beta=many.beta)
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
