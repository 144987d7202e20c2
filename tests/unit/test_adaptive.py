"""Adaptive audits (`privacy_gate.adaptive`, `privacy_gate.rounds`): the look schedule,
the settling tests and their error control under optional stopping, on signals drawn
from known distributions with the models revealed round by round."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from scipy import special, stats

from privacy_gate import AuditReport, Pseudonymizer, audit, make_signals, records_from_columns
from privacy_gate.adaptive import (
    AdaptivePlan,
    auc_lower_bound,
    parse_reference_models,
    settle,
)
from privacy_gate.config import default_config, parse_config
from privacy_gate.errors import ConfigError
from privacy_gate.gate import reference_models_for_policy
from privacy_gate.plan import draw_plan
from privacy_gate.record_stats import hanley_mcneil_se
from privacy_gate.rounds import audit_in_rounds
from privacy_gate.signals import Signals

PSEUDONYMS = Pseudonymizer(key=b"adaptive")


# --- settings ------------------------------------------------------------------------------
def test_the_schedule_doubles_up_to_the_maximum() -> None:
    assert AdaptivePlan().schedule == (16, 32, 64, 128, 256)
    assert AdaptivePlan(round_size=16, max_reference_models=48).schedule == (16, 32, 48)
    assert AdaptivePlan(round_size=16, max_reference_models=16).schedule == (16,)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_reference_models": 8}, "max_reference_models"),  # below one round
        ({"max_reference_models": 65}, "max_reference_models"),  # odd
        ({"round_size": 15}, "round_size"),  # odd
        ({"round_size": 0}, "round_size"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_bad_settings_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        AdaptivePlan(**options)


def test_reference_models_is_a_k_or_auto() -> None:
    assert parse_reference_models(64, owner="x") == 64
    assert parse_reference_models("auto", owner="x") == AdaptivePlan()
    assert parse_reference_models("AUTO", owner="x", max_reference_models=64) == AdaptivePlan(
        max_reference_models=64
    )
    with pytest.raises(ConfigError, match=r"'reference_models'.*'auto'"):
        parse_reference_models(63, owner="x")
    with pytest.raises(ConfigError, match="only with reference_models: auto"):
        parse_reference_models(64, owner="x", max_reference_models=128)


# --- the aggregate AUC's lower bound -----------------------------------------------------------
def test_hanley_mcneil_se_matches_the_spread_of_simulated_aucs() -> None:
    """Binormal scores with true AUC Phi(1/sqrt 2) = 0.760: the SD of the empirical AUC over
    4,000 draws of 150 + 150 scores is Hanley-McNeil's SE within 5%."""
    rng = np.random.default_rng(0)
    n = 150
    pos = rng.standard_normal((4000, n)) + 1.0
    neg = rng.standard_normal((4000, n))
    ranks = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)[:, :n]
    aucs = (ranks.sum(axis=1) - n * (n + 1) / 2) / (n * n)
    truth = float(special.ndtr(1 / math.sqrt(2)))
    assert aucs.mean() == pytest.approx(truth, abs=2e-3)
    assert aucs.std(ddof=1) == pytest.approx(hanley_mcneil_se(truth, n, n), rel=0.05)
    bound = auc_lower_bound(truth, n, n, 0.05)
    assert bound == pytest.approx(truth - 1.6448536 * hanley_mcneil_se(truth, n, n), rel=1e-6)
    assert np.mean(aucs - 1.6448536 * hanley_mcneil_se(truth, n, n) > truth) < 0.07


# --- rounds revealed from known distributions ---------------------------------------------------
def _records(n_records: int) -> Any:
    return records_from_columns(
        [f"r{i}" for i in range(n_records)], [f"p{i}" for i in range(n_records)], {}
    )


def _revealer(
    shift: np.ndarray, k_max: int, seed: int, sd_in: float = 1.0
) -> tuple[Any, np.ndarray]:
    """``reveal(k)`` of nested rounds: IN scores N(shift, sd_in^2), OUT N(0, 1), per record."""
    n = shift.size
    rng = np.random.default_rng(seed)
    masks = draw_plan(np.arange(n), k_max, seed=seed)
    scores = rng.standard_normal((k_max, n)) * np.where(masks, sd_in, 1.0) + masks * shift

    def reveal(k: int) -> Signals:
        return make_signals(scores[:k], masks[:k], task="binary")

    return reveal, masks


AT_RISK = 0.9
D_BOUNDARY = math.sqrt(2) * float(special.ndtri(AT_RISK))  # record AUC exactly 0.9
COUNT_POLICY = parse_config(
    {
        "risk": {"at_risk_auc": AT_RISK, "null_replicates": 20},
        "gate": {"max_patients_at_risk": 0, "fdr": 0.1},
    }
)


@pytest.mark.slow
@pytest.mark.parametrize("sd_ratio", [1.0, 3.0])
def test_at_risk_fdr_holds_across_looks_at_the_boundary(sd_ratio: float) -> None:
    """Every record sits exactly at the at-risk AUC, so any confident patient is a false
    discovery. Over 300 audits with three looks (K = 16/32/64), at equal IN/OUT variances
    and at an SD ratio of 3, the rate of audits where some look settles a fail stays at
    most the FDR (0.1). Counting each look at the full FDR instead (no spending over
    looks) settles more (measured at equal variances, 1,000 audits: 0.009 spent, 0.052
    not; with Welch's df, before the Berger-Boos test: 0.071 and 0.211)."""
    plan = AdaptivePlan(round_size=16, max_reference_models=64)
    n, seeds = 40, 300
    records = _records(n)
    settled = naive = 0
    shift = float(special.ndtri(AT_RISK)) * math.sqrt(1.0 + sd_ratio**2)  # AUC exactly 0.9
    for seed in range(seeds):
        reveal, _ = _revealer(np.full(n, shift), 64, seed, sd_in=sd_ratio)
        reports = [
            audit(reveal(k), records, COUNT_POLICY, pseudonymizer=PSEUDONYMS).report
            for k in plan.schedule
        ]
        settled += any(settle(r, COUNT_POLICY, plan).outcome == "fail_settled" for r in reports)
        naive += any(r.summary.patients_at_risk > 0 for r in reports)
    assert settled / seeds <= 0.1 + 2 * math.sqrt(0.1 * 0.9 / seeds)
    assert naive >= 1.5 * settled and naive > settled, (settled, naive)


@pytest.mark.slow  # seconds of Monte Carlo or numerics: the full run (CI), not the fast lane
def test_no_leak_never_settles_a_fail() -> None:
    """Null records (AUC 0.5) under every settle-able rule: 100 audits, no settled fail."""
    plan = AdaptivePlan(round_size=16, max_reference_models=64)
    policy = parse_config(
        {
            "risk": {"null_replicates": 20},
            "gate": {
                "max_patients_at_risk": 0,
                "max_patient_auc": 0.95,
                "max_fraction_at_risk": 0.0,
            },
        }
    )
    records = _records(60)
    for seed in range(100):
        reveal, _ = _revealer(np.zeros(60), 64, seed)
        for k in plan.schedule:
            report = audit(reveal(k), records, policy, pseudonymizer=PSEUDONYMS).report
            assert settle(report, policy, plan).outcome != "fail_settled", (seed, k)


def test_a_planted_leak_settles_as_a_fail_in_the_first_round_or_two() -> None:
    plan = AdaptivePlan()
    shift = np.r_[np.full(10, 4.0), np.zeros(290)]
    reveal, _ = _revealer(shift, 256, 0)
    result = audit_in_rounds(
        reveal, _records(300), default_config(), plan, pseudonymizer=PSEUDONYMS
    )
    adaptive = result.report.adaptive
    assert adaptive is not None
    assert adaptive.stopped == "fail_settled"
    assert [look.reference_models for look in adaptive.looks] in ([16], [16, 32])
    # settled on evidence: the at-risk count or the worst patient's lower bound (at K =
    # 16-32 the at-risk test, valid for any variance ratio, needs AUC ~0.99999 at 1e-5)
    assert set(adaptive.looks[-1].settled) & {"max_patients_at_risk", "max_patient_auc"}
    used = adaptive.looks[-1].reference_models
    assert adaptive.reference_models_saved == 256 - used
    assert result.report.audit.reference_models == used
    assert not result.decision.passed
    # at K = 16-32 the power rules are violated too; their messages reflect the final
    # state: the fail is settled, so no advice to train the K the power rules need
    power = [v for v in result.decision.violations if v.rule in _POWER_RULES]
    assert power, [v.rule for v in result.decision.violations]
    for violation in power:
        assert "needs at least" not in violation.message
        assert f"The fail is settled at K = {used} by" in violation.message


_POWER_RULES = {"noise_floor", "max_detectable_auc", "min_reference_models"}


NO_AGGREGATE = dataclasses.replace(
    default_config(),
    gate=dataclasses.replace(
        default_config().gate,
        limits={
            key: limit
            for key, limit in default_config().gate.limits.items()
            if not key.startswith("max_aggregate_")
        },
    ),
)
"""The default policy without its rules on the release candidate (no target signals here)."""


def test_a_private_model_settles_as_a_pass_at_the_k_the_power_rules_need() -> None:
    n = 300
    config = NO_AGGREGATE
    needed = reference_models_for_policy(config, n, n)
    assert needed is not None and 32 < needed <= 64  # so the looks at 16 and 32 stay open
    reveal, _ = _revealer(np.zeros(n), 256, 1)
    result = audit_in_rounds(reveal, _records(n), config, AdaptivePlan(), pseudonymizer=PSEUDONYMS)
    adaptive = result.report.adaptive
    assert adaptive is not None and adaptive.stopped == "pass_settled"
    assert [look.outcome for look in adaptive.looks] == ["open", "open", "pass_settled"]
    assert {"noise_floor", "max_detectable_auc"} & set(adaptive.looks[0].violated)
    assert result.report.audit.reference_models == 64 and result.decision.passed


def test_the_maximum_reached_unsettled_is_the_last_verdict_with_a_warning() -> None:
    """At most 32 models: the power rules cannot be met, so the audit fails unsettled."""
    n = 300
    reveal, _ = _revealer(np.zeros(n), 32, 2)
    plan = AdaptivePlan(max_reference_models=32)
    result = audit_in_rounds(reveal, _records(n), NO_AGGREGATE, plan, pseudonymizer=PSEUDONYMS)
    adaptive = result.report.adaptive
    assert adaptive is not None and adaptive.stopped == "unsettled"
    assert not result.decision.passed
    assert any("unsettled" in w for w in result.decision.warnings)
    again = AuditReport.from_dict(result.report.to_dict())  # the section round-trips
    assert again.adaptive == adaptive


def test_stopping_at_k_equals_a_fixed_k_audit_of_the_same_plan() -> None:
    """The plan is nested: the first 16 models of a 256-model plan are a 16-model plan."""
    shift = np.r_[np.full(10, 4.0), np.zeros(290)]
    reveal, masks = _revealer(shift, 256, 0)
    np.testing.assert_array_equal(masks[:16], draw_plan(np.arange(300), 16, seed=0))
    np.testing.assert_array_equal(masks[:64], draw_plan(np.arange(300), 64, seed=0))
    adaptive = audit_in_rounds(
        reveal, _records(300), default_config(), AdaptivePlan(), pseudonymizer=PSEUDONYMS
    )
    used = adaptive.report.audit.reference_models
    assert used in (16, 32)
    fixed = audit(reveal(used), _records(300), default_config(), pseudonymizer=PSEUDONYMS)
    ours, theirs = adaptive.report.to_dict(), fixed.report.to_dict()
    for section in ("summary", "aggregate", "subgroups"):
        assert ours[section] == theirs[section], section


def test_the_looks_are_rendered_and_logged_as_metrics() -> None:
    from privacy_gate.metrics import report_metrics
    from privacy_gate.render import render_markdown

    shift = np.r_[np.full(10, 4.0), np.zeros(290)]
    reveal, _ = _revealer(shift, 256, 0)
    result = audit_in_rounds(
        reveal, _records(300), default_config(), AdaptivePlan(), pseudonymizer=PSEUDONYMS
    )
    adaptive = result.report.adaptive
    assert adaptive is not None
    markdown = render_markdown(result.report, {})
    assert "## Adaptive audit" in markdown
    assert "K = 16, 32, 64, 128, 256 (at most 256)" in markdown
    assert f"{adaptive.reference_models_saved} reference models fewer" in markdown
    last = adaptive.looks[-1]
    assert f"| {len(adaptive.looks)} | {last.reference_models} | fail settled |" in markdown
    metrics = report_metrics(result.report)
    assert metrics["privacy_gate/adaptive/looks"] == len(adaptive.looks)
    assert metrics["privacy_gate/adaptive/reference_models_saved"] == 256 - last.reference_models
    assert metrics["privacy_gate/adaptive/settled"] == 1.0


WORST_ONLY = parse_config({"risk": {"null_replicates": 20}, "gate": {"max_patient_auc": 0.95}})
"""One point-estimate rule: what settles it is the worst patient's lower bound alone."""


def test_records_just_below_the_limit_settle_no_fail_on_the_worst_patient() -> None:
    """200 records at true AUC 0.90, limit 0.95: the largest estimate passes the limit by
    noise at K = 64 (the old noise-floor rule settled a fail there in 150 of 150 runs), but
    its lower confidence bound does not, so no look settles a fail."""
    plan = AdaptivePlan(round_size=16, max_reference_models=256)
    records = _records(200)
    violated = 0
    for seed in range(4):
        reveal, _ = _revealer(np.full(200, D_BOUNDARY), 256, seed)
        for k in plan.schedule:
            report = audit(reveal(k), records, WORST_ONLY, pseudonymizer=PSEUDONYMS).report
            look = settle(report, WORST_ONLY, plan)
            violated += "max_patient_auc" in look.violated
            assert "max_patient_auc" not in look.settled, (seed, k, report.summary.patient_auc)
    assert violated >= 4  # the point estimate did cross the limit: the case is real


def test_a_strong_leak_settles_the_worst_patient_rule_early() -> None:
    plan = AdaptivePlan(round_size=16, max_reference_models=256)
    shift = np.r_[np.full(3, 6.0), np.zeros(197)]
    reveal, _ = _revealer(shift, 256, 2)
    looks = [
        settle(audit(reveal(k), _records(200), WORST_ONLY, pseudonymizer=PSEUDONYMS).report,
               WORST_ONLY, plan)
        for k in plan.schedule[:2]
    ]  # fmt: skip
    assert any("max_patient_auc" in look.settled for look in looks), looks
