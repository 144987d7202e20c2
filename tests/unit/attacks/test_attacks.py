"""Aggregate attacks against scikit-learn, SciPy and brute-force implementations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from privacy_gate.attacks import (
    ATTACKS,
    AggregateResult,
    AttackInputs,
    AttackSpec,
    lira_offline,
    lira_online,
    register_attack,
    rmia,
    roc_auc,
    roc_curve,
    run_attacks,
    tpr_at_fpr,
    tune_rmia_offline_a,
    unregister_attack,
)
from privacy_gate.metrics import report_metrics
from privacy_gate.pipeline import audit
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.record_stats import RecordMoments, record_moments
from privacy_gate.records import records_from_columns
from privacy_gate.signals import make_signals

FPRS = (1e-3, 1e-2, 0.1)
LIRA = {
    "lira_online",
    "lira_online_fixed_variance",
    "lira_offline",
    "lira_offline_fixed_variance",
}


@dataclass
class World:
    """Reference-model signals and a release candidate's scores for one audit pool."""

    target: np.ndarray
    is_member: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    moments: RecordMoments


def _world(
    n_records: int,
    n_models: int,
    *,
    effect: float,
    seed: int,
    centre: float = -1.0,
    spread: float = 1.5,
    sd_range: tuple[float, float] = (0.5, 1.5),
) -> World:
    """Each record has its own OUT distribution N(mu_out, sd_out) and IN distribution
    N(mu_out + effect, sd_in); the candidate's members are drawn from IN, others from OUT.
    With ``effect == 0`` IN and OUT are the same distribution (sd_in = sd_out)."""
    rng = np.random.default_rng(seed)
    mu_out = rng.normal(centre, spread, n_records)
    mu_in = mu_out + effect
    sd_in = rng.uniform(*sd_range, n_records)
    sd_out = rng.uniform(*sd_range, n_records) if effect else sd_in
    masks = np.zeros((n_models, n_records), bool)
    masks[: n_models // 2] = True
    masks = np.take_along_axis(masks, np.argsort(rng.random(masks.shape), axis=0), axis=0)
    noise = rng.standard_normal((n_models, n_records))
    scores = np.where(masks, mu_in + sd_in * noise, mu_out + sd_out * noise)
    is_member = rng.random(n_records) < 0.5
    z = rng.standard_normal(n_records)
    target = np.where(is_member, mu_in + sd_in * z, mu_out + sd_out * z)
    return World(target, is_member, scores, masks, record_moments(scores, masks))


def _run(world: World, *, single_label: bool, offline_a: float | None = 0.3) -> AggregateResult:
    """run_attacks on a constructed world at the test FPRs (offline_a None: tuned)."""
    return run_attacks(
        world.target,
        world.is_member,
        world.moments,
        world.scores,
        world.masks,
        fprs=FPRS,
        single_label=single_label,
        offline_a=offline_a,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _rmia_brute_force(
    target: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    population: np.ndarray,
    gamma: float,
    offline_a: float | None,
) -> np.ndarray:
    """The definition, one record and one population record at a time."""
    n_models, n_records = scores.shape
    prior = []
    for j in range(n_records):
        p = [float(_sigmoid(np.array(scores[k, j]))) for k in range(n_models)]
        if offline_a is None:  # balanced mixture of the IN and OUT means (docs/statistics.md)
            p_in = [p[k] for k in range(n_models) if masks[k, j]]
            p_out = [p[k] for k in range(n_models) if not masks[k, j]]
            if p_in and p_out:
                prior.append((sum(p_in) / len(p_in) + sum(p_out) / len(p_out)) / 2)
            else:
                prior.append(sum(p) / len(p))
        else:
            out = [p[k] for k in range(n_models) if not masks[k, j]]
            mean_out = sum(out) / len(out)
            prior.append(((1 + offline_a) * mean_out + (1 - offline_a)) / 2)
    lr = [float(_sigmoid(np.array(target[j]))) / prior[j] for j in range(n_records)]
    result = []
    size = int(np.count_nonzero(population))
    for x in range(n_records):
        zs = [z for z in range(n_records) if population[z] and z != x]
        # One denominator for every x (the population size), so that the score ranks
        # records by their count; a non-member x is itself never counted.
        result.append(sum(lr[x] / lr[z] >= gamma for z in zs) / size)
    return np.array(result)


def _independent_scores(world: World, attack: str) -> np.ndarray:
    """Each attack's membership score written out from docs/statistics.md."""
    m, s = world.moments, world.target

    def log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)

    fixed_in = np.full_like(m.sd_in, np.mean(m.sd_in))
    fixed_out = np.full_like(m.sd_out, np.mean(m.sd_out))
    population = ~world.is_member
    if attack == "lira_online":
        return log_normal(s, m.mu_in, m.sd_in) - log_normal(s, m.mu_out, m.sd_out)
    if attack == "lira_online_fixed_variance":
        return log_normal(s, m.mu_in, fixed_in) - log_normal(s, m.mu_out, fixed_out)
    # Offline: the one-sided p-value 1 - Phi(z); a smaller p-value means member.
    if attack == "lira_offline":
        return -stats.norm.logsf((s - m.mu_out) / m.sd_out)
    if attack == "lira_offline_fixed_variance":
        return -stats.norm.logsf((s - m.mu_out) / fixed_out)
    if attack == "rmia_online":
        return _rmia_brute_force(s, world.scores, world.masks, population, 2.0, None)
    if attack == "rmia_offline":
        return _rmia_brute_force(s, world.scores, world.masks, population, 2.0, 0.3)
    raise AssertionError(attack)


def _sklearn_tpr_at(score: np.ndarray, is_member: np.ndarray, level: float) -> float:
    fpr, tpr, _ = metrics.roc_curve(is_member, score, drop_intermediate=False)
    return float(tpr[fpr <= level].max())


# --------------------------------------------------------------------------- ROC


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_roc_auc_matches_sklearn_including_ties(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    is_member = rng.random(n) < 0.4
    is_member[:2] = [True, False]
    score = rng.normal(0.0, 1.0, n) + 0.8 * is_member
    if decimals is not None:
        score = np.round(score, decimals)
    assert roc_auc(score, is_member) == pytest.approx(
        metrics.roc_auc_score(is_member, score), abs=1e-12
    )


def test_roc_auc_hand_values() -> None:
    is_member = np.array([True, True, False, False])
    assert roc_auc(np.array([4.0, 3.0, 2.0, 1.0]), is_member) == 1.0
    assert roc_auc(np.array([1.0, 2.0, 3.0, 4.0]), is_member) == 0.0
    assert roc_auc(np.array([1.0, 1.0, 1.0, 1.0]), is_member) == 0.5
    # Pairs: (3>2) (3>1) (0.5 tie with 2... ) -> member scores 3, 2; non-member 2, 1.
    # (3,2)=1 (3,1)=1 (2,2)=0.5 (2,1)=1 -> 3.5 / 4.
    assert roc_auc(np.array([3.0, 2.0, 2.0, 1.0]), is_member) == 0.875


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("decimals", [None, 1])
def test_roc_curve_matches_sklearn_points(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(10 + seed)
    n = 300
    is_member = rng.random(n) < 0.5
    score = rng.normal(0.0, 1.0, n) + is_member
    if decimals is not None:
        score = np.round(score, decimals)
    fpr, tpr = roc_curve(score, is_member)
    expected_fpr, expected_tpr, _ = metrics.roc_curve(is_member, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, expected_tpr, atol=1e-15)
    # The trapezoid area under these points is the Mann-Whitney AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(score, is_member), abs=1e-12)


def test_tpr_at_fpr() -> None:
    fpr = np.array([0.0, 0.0, 0.001, 0.01, 0.02, 0.5, 1.0])
    tpr = np.array([0.0, 0.05, 0.1, 0.3, 0.35, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 1e-3) == 0.1
    assert tpr_at_fpr(fpr, tpr, 1e-2) == 0.3
    assert tpr_at_fpr(fpr, tpr, 0.015) == 0.3
    assert tpr_at_fpr(fpr, tpr, 1e-4) == 0.05
    rng = np.random.default_rng(20)
    is_member = rng.random(1000) < 0.5
    score = rng.normal(size=1000) + 1.5 * is_member
    roc = roc_curve(score, is_member)
    for level in FPRS:
        assert tpr_at_fpr(*roc, level) == _sklearn_tpr_at(score, is_member, level)


# --------------------------------------------------------------------------- LiRA


def test_lira_online_is_difference_of_gaussian_log_densities() -> None:
    rng = np.random.default_rng(30)
    s, mu_in, mu_out = rng.normal(size=(3, 100))
    sd_in, sd_out = rng.uniform(0.2, 3.0, (2, 100))
    by_hand = (
        -0.5 * ((s - mu_in) / sd_in) ** 2
        - np.log(sd_in)
        + 0.5 * ((s - mu_out) / sd_out) ** 2
        + np.log(sd_out)
    )
    np.testing.assert_allclose(lira_online(s, mu_in, sd_in, mu_out, sd_out), by_hand, rtol=1e-10)
    logpdf = stats.norm.logpdf(s, mu_in, sd_in) - stats.norm.logpdf(s, mu_out, sd_out)
    np.testing.assert_allclose(lira_online(s, mu_in, sd_in, mu_out, sd_out), logpdf, rtol=1e-10)
    # One record, by hand: s = 1, IN N(1, 1), OUT N(0, 2): 0 - 0 + 1/8 + log 2.
    one = lira_online(
        np.array([1.0]), np.array([1.0]), np.array([1.0]), np.array([0.0]), np.array([2.0])
    )
    assert one[0] == pytest.approx(0.125 + np.log(2.0), rel=1e-12)


def test_lira_offline_ranks_like_the_one_sided_p_value() -> None:
    rng = np.random.default_rng(31)
    s, mu_out = rng.normal(size=(2, 500))
    sd_out = rng.uniform(0.5, 2.0, 500)
    score = lira_offline(s, mu_out, sd_out)
    p_value = 1 - stats.norm.cdf((s - mu_out) / sd_out)
    np.testing.assert_array_equal(stats.rankdata(score), stats.rankdata(-p_value))
    is_member = rng.random(500) < 0.5
    assert roc_auc(score, is_member) == pytest.approx(
        metrics.roc_auc_score(is_member, -p_value), abs=1e-12
    )
    # Far in the tail the p-value saturates but the offline score still ranks.
    far = lira_offline(np.array([40.0, 50.0]), np.zeros(2), np.ones(2))
    assert far[1] > far[0]


# --------------------------------------------------------------------------- RMIA


@pytest.mark.parametrize("offline_a", [None, 0.3, 0.0, 1.0])
@pytest.mark.parametrize("gamma", [2.0, 1.3])
def test_rmia_matches_brute_force_definition(offline_a: float | None, gamma: float) -> None:
    rng = np.random.default_rng(40)
    n_models, n_records = 6, 70
    scores = rng.normal(-0.5, 2.0, (n_models, n_records))
    masks = rng.random((n_models, n_records)) < 0.5
    masks[0], masks[1] = True, False
    target = rng.normal(0.0, 2.0, n_records)
    population = rng.random(n_records) < 0.6
    got = rmia(target, scores, masks, population, gamma=gamma, offline_a=offline_a)
    expected = _rmia_brute_force(target, scores, masks, population, gamma, offline_a)
    assert got.shape == (n_records,)
    np.testing.assert_array_equal(got, expected)


def test_rmia_hand_example() -> None:
    # One reference model, scores 0 -> p = 1/2 everywhere, so LR = 2 sigmoid(target).
    # Targets logit(0.8), logit(0.4), logit(0.1), logit(0.3): LR 1.6, 0.8, 0.2, 0.6.
    target = np.log(np.array([0.8, 0.4, 0.1, 0.3]) / (1 - np.array([0.8, 0.4, 0.1, 0.3])))
    scores = np.zeros((2, 4))
    masks = np.array([[True] * 4, [False] * 4])
    population = np.array([False, True, True, True])
    got = rmia(target, scores, masks, population, gamma=2.0, offline_a=None)
    # x0: z in {1,2,3}: 1.6/0.8 = 2 (>= 2), 1.6/0.2 = 8, 1.6/0.6 = 2.67 -> 3.
    # x1: z in {2,3}: 0.8/0.2 = 4, 0.8/0.6 -> 1. x2: z in {1,3}: none -> 0.
    # x3: z in {1,2}: 0.6/0.2 = 3 -> 1. Shares of the population of 3.
    np.testing.assert_allclose(got, [1.0, 1 / 3, 0.0, 1 / 3])


def test_rmia_ranks_equal_counts_equally() -> None:
    # A member and a non-member that dominate the same number of population records get
    # the same score: the share must not favour either side through its denominator.
    target = np.log(np.array([0.8, 0.8, 0.1, 0.1]) / (1 - np.array([0.8, 0.8, 0.1, 0.1])))
    scores = np.zeros((2, 4))
    masks = np.array([[True] * 4, [False] * 4])
    population = np.array([False, True, True, True])
    got = rmia(target, scores, masks, population, gamma=2.0, offline_a=None)
    assert got[0] == got[1] == 2 / 3


# --------------------------------------------------------------------------- run_attacks


def test_run_attacks_matches_independent_computations() -> None:
    world = _world(2000, 16, effect=1.0, seed=50)
    result = _run(world, single_label=True)
    assert set(result.attacks) == set(ATTACKS)
    assert result.members == int(world.is_member.sum())
    assert result.non_members == int((~world.is_member).sum())
    for attack in ATTACKS:
        score = _independent_scores(world, attack)
        got = result.attacks[attack]
        # A near-tie swapped by rounding moves the AUC by 1 / (n_pos n_neg) ~ 1e-6.
        assert got.auc == pytest.approx(metrics.roc_auc_score(world.is_member, score), abs=1e-5)
        for level in FPRS:
            assert got.tpr_at_fpr[level] == pytest.approx(
                _sklearn_tpr_at(score, world.is_member, level), abs=2e-3
            )
        assert got.roc_fpr[0] == 0.0
        assert got.roc_fpr[-1] == 1.0 and got.roc_tpr[-1] == 1.0
        assert np.all(np.diff(got.roc_fpr) >= 0) and np.all(np.diff(got.roc_tpr) >= 0)
        assert len(got.roc_fpr) <= 210
    assert result.attacks["lira_online"].auc > 0.65


def test_run_attacks_online_lira_beats_chance_and_offline() -> None:
    world = _world(3000, 32, effect=1.0, seed=51, spread=3.0)
    result = _run(world, single_label=True)
    online = result.attacks["lira_online"]
    assert online.auc > 0.7
    assert online.tpr_at_fpr[0.1] > 0.2
    # Per-record calibration matters when records differ: a raw-score threshold is weaker.
    assert online.auc > metrics.roc_auc_score(world.is_member, world.target) + 0.1


def test_run_attacks_without_membership_effect_is_chance() -> None:
    world = _world(3000, 16, effect=0.0, seed=52)
    result = _run(world, single_label=True)
    for attack, got in result.attacks.items():
        assert got.auc == pytest.approx(0.5, abs=0.04), attack
        assert got.tpr_at_fpr[0.1] < 0.2, attack


def test_strongest_and_max_tpr() -> None:
    world = _world(1500, 16, effect=0.8, seed=53)
    result = _run(world, single_label=True)
    aucs = {
        attack: metrics.roc_auc_score(world.is_member, _independent_scores(world, attack))
        for attack in ATTACKS
    }
    best = max(aucs, key=aucs.__getitem__)
    assert result.strongest == best
    assert result.max_auc == pytest.approx(aucs[best], abs=1e-5)
    for level in FPRS:
        expected = max(
            _sklearn_tpr_at(_independent_scores(world, a), world.is_member, level)
            for a in (
                "lira_online",
                "lira_offline",
                "lira_online_fixed_variance",
                "lira_offline_fixed_variance",
                "rmia_online",
                "rmia_offline",
            )
        )
        assert result.max_tpr_at(level) == pytest.approx(expected, abs=2e-3)
        assert result.max_tpr_at(level) == max(r.tpr_at_fpr[level] for r in result.attacks.values())


def test_rmia_is_skipped_for_multi_label_models() -> None:
    world = _world(200, 8, effect=1.0, seed=54)
    result = _run(world, single_label=False)
    assert set(result.attacks) == LIRA
    single = _run(world, single_label=True)
    for attack in LIRA:
        assert result.attacks[attack].auc == single.attacks[attack].auc


# --------------------------------------------------------------------------- contract


def _inputs(world: World) -> AttackInputs:
    return AttackInputs(
        target=world.target,
        is_member=world.is_member,
        moments=world.moments,
        reference_scores=world.scores,
        reference_masks=world.masks,
        single_label=True,
        gamma=2.0,
        offline_a=0.3,
    )


def test_every_attack_has_an_independent_computation() -> None:
    """`_independent_scores` writes each registered attack out from its definition: a new
    attack needs one there (the contract each attack keeps)."""
    world = _world(40, 8, effect=1.0, seed=61)
    for attack in ATTACKS:
        assert _independent_scores(world, attack).shape == (40,)


def _arrays(world: World) -> list[np.ndarray]:
    m = world.moments
    return [
        world.target,
        world.is_member,
        world.scores,
        world.masks,
        m.mu_in,
        m.sd_in,
        m.mu_out,
        m.sd_out,
        m.n_in,
        m.n_out,
    ]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_contract(attack: str) -> None:
    world = _world(300, 16, effect=4.0, seed=60, centre=-2.0, spread=0.3, sd_range=(0.2, 0.4))
    before = [a.copy() for a in _arrays(world)]
    score = ATTACKS[attack].score(_inputs(world))
    assert score.shape == (300,)
    assert np.all(np.isfinite(score))
    assert roc_auc(score, world.is_member) > 0.95
    assert score[world.is_member].mean() > score[~world.is_member].mean()
    for array, copy in zip(_arrays(world), before, strict=True):
        np.testing.assert_array_equal(array, copy)
    # Read-only inputs work and give the same scores.
    for array in _arrays(world):
        array.setflags(write=False)
    np.testing.assert_array_equal(ATTACKS[attack].score(_inputs(world)), score)
    # And run_attacks reports the same AUC for it.
    result = _run(world, single_label=True)
    assert result.attacks[attack].auc == roc_auc(score, world.is_member)


# --------------------------------------------------------------------------- RMIA's a


def _tuned_a_brute_force(scores: np.ndarray, masks: np.ndarray, gamma: float) -> float:
    """docs/statistics.md's tuning, written out: model 0 is the target, models 1.. give the prior,
    the grid's a with the highest sklearn AUC wins, the smallest on ties."""
    target, members = scores[0], masks[0]
    best_a, best_auc = None, -1.0
    for a in np.round(np.arange(0.0, 1.0001, 0.05), 10):
        score = _rmia_brute_force(target, scores[1:], masks[1:], ~members, gamma, float(a))
        auc = metrics.roc_auc_score(members, score)
        if auc > best_auc + 1e-12:
            best_a, best_auc = float(a), auc
    assert best_a is not None
    return best_a


@pytest.mark.parametrize("seed", range(3))
def test_offline_a_is_tuned_on_reference_model_zero(seed: int) -> None:
    world = _world(120, 8, effect=1.5, seed=seed)
    tuned = tune_rmia_offline_a(world.scores, world.masks, gamma=2.0)
    assert tuned == pytest.approx(_tuned_a_brute_force(world.scores, world.masks, 2.0))


def test_run_attacks_reports_the_tuned_a_and_uses_it() -> None:
    world = _world(400, 8, effect=1.0, seed=7)
    tuned = _run(world, single_label=True, offline_a=None)
    a = tune_rmia_offline_a(world.scores, world.masks, gamma=2.0)
    assert tuned.parameters == {"rmia_offline_a": a, "rmia_offline_a_source": "tuned"}
    given = _run(world, single_label=True, offline_a=a)
    assert given.parameters["rmia_offline_a_source"] == "given"
    assert tuned.attacks["rmia_offline"].auc == given.attacks["rmia_offline"].auc


def test_offline_a_tuning_needs_three_models_and_both_labels() -> None:
    world = _world(50, 8, effect=1.0, seed=1)
    assert tune_rmia_offline_a(world.scores[:2], world.masks[:2], gamma=2.0) is None
    masks = world.masks.copy()
    masks[0] = True
    assert tune_rmia_offline_a(world.scores, masks, gamma=2.0) is None


# --------------------------------------------------------------------------- a new attack


def test_an_attack_registered_in_one_place_runs_in_an_audit() -> None:
    """The score-threshold attack (Yeom et al. 2018: a higher score means member),
    registered here, is scored, reported and exported like the built-in ones."""
    world = _world(400, 16, effect=1.0, seed=62)
    register_attack(AttackSpec("score_threshold", lambda inputs: inputs.target.copy()))
    try:
        signals = make_signals(
            world.scores,
            world.masks,
            target_scores=world.target,
            target_members=world.is_member,
        )
        records = records_from_columns([f"r{i}" for i in range(400)])
        report = audit(signals, records, pseudonymizer=Pseudonymizer(key=b"k")).report
        assert report.aggregate is not None
        figures = report.aggregate.attacks["score_threshold"]
        assert figures.auc == pytest.approx(metrics.roc_auc_score(world.is_member, world.target))
        assert list(report.aggregate.attacks)[-1] == "score_threshold"
        keys = report_metrics(report)
        assert keys["privacy_gate/attack/score_threshold/auc"] == pytest.approx(figures.auc)
    finally:
        unregister_attack("score_threshold")
    assert "score_threshold" not in ATTACKS


def test_an_attack_name_must_be_new_and_an_identifier() -> None:
    with pytest.raises(ValueError, match="lira_online"):
        register_attack(AttackSpec("lira_online", lambda inputs: inputs.target))
    with pytest.raises(ValueError, match="a b"):
        register_attack(AttackSpec("a b", lambda inputs: inputs.target))
