"""The gate decision (`privacy_gate.gate`) on hand-built report figures: each rule in
isolation, fail-closed evidence, power rules, the BH recount and monotonicity. The gate
on real pipeline reports is in test_pipeline_gate.py."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gate_helpers import (
    FPR_KEYS,
    PROPERTY,
    assert_monotone,
    decide,
    independent_bh,
    rules_of,
    tight_and_loose,
    typed_report,
    with_limits,
)
from hypothesis import given
from hypothesis import strategies as st

from privacy_gate.at_risk import detectable_auc
from privacy_gate.config import GateConfig, RiskConfig, default_config, parse_config
from privacy_gate.errors import ReportError
from privacy_gate.gate import Status, reference_models_for_policy
from privacy_gate.noise_floor import reference_models_needed
from privacy_gate.report import load_report
from privacy_gate.rules import RULES

# --- hand-built reports ------------------------------------------------------------------


def _report(**changes: Any) -> dict[str, Any]:
    """A report whose figures pass `ALL_RULES`; ``changes`` are dotted-path overrides."""
    report: dict[str, Any] = {
        "schema_version": "2.0",
        "audit": {"reference_models": 64, "records": 10_000, "patients": 5_000},
        "summary": {
            "patient_auc": {"max": 0.8},
            "at_risk_p_values": [0.2, 0.3, 0.45],
            "noise_floor": {"max_patient_auc_q95": 0.7},
            "power": {"count_pairs": [[32, 32, 10_000]]},
        },
        "aggregate": {
            "attacks": {
                "lira_online": {"auc": 0.55, "tpr_at_fpr": {"0.001": 0.002, "0.01": 0.012}},
                "rmia_online": {"auc": 0.53, "tpr_at_fpr": {"0.001": 0.004, "0.01": 0.011}},
            }
        },
        "subgroups": {
            "sex": {
                "tail_patients": 50,
                "groups": {
                    "F": _group(0.2, 0.3),
                    "M": _group(-0.2, 0.3),
                    "<missing>": {
                        "status": "missing",
                        "size": 10,
                        "relative_change": None,
                        "p_value": None,
                        "p_value_adjusted": None,
                    },
                },
            }
        },
    }
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = report
        for name in parents:
            node = node[name]
        node[leaf] = value
    return report


def _group(
    change: float, p_adjusted: float, status: str = "tested", size: int = 2500
) -> dict[str, Any]:
    """A group as `privacy_gate.subgroups` writes it; the gate decides on the stored
    Bonferroni-adjusted p-value (its computation is tested in test_subgroups)."""
    return {
        "status": status,
        "size": size,
        "relative_change": change,
        "p_value": p_adjusted / 2,
        "p_value_adjusted": p_adjusted,
        "observed": 12,
        "expected": 10.0,
    }


def _detectable(k: int, n_patients: int = 5_000) -> float:
    return detectable_auc(0.9, k // 2, k // 2, 0.05 / n_patients, 0.8)


ALL_RULES = parse_config(
    {
        "risk": {"at_risk_auc": 0.9},
        "gate": {
            "min_reference_models": 32,
            "max_patient_auc": 0.95,
            "max_patients_at_risk": 10,
            "max_fraction_at_risk": 0.01,
            "max_aggregate_auc": 0.6,
            "max_aggregate_tpr_at_fpr": {0.001: 0.01, 0.01: 0.05},
            "max_subgroup_relative_change": 1.0,
            "subgroup_alpha": 0.05,
            "max_detectable_auc": 0.999,
            "fdr": 0.05,
        },
    }
)


def test_baseline_report_passes_every_rule() -> None:
    decision = decide(_report(), ALL_RULES)
    assert decision.status is Status.PASS
    assert decision.passed
    assert decision.violations == ()
    assert decision.patients_at_risk == 0
    assert decision.warnings == ()
    assert decision.to_dict() == {"status": "pass", "violations": [], "warnings": []}
    assert decision.one_line() == "privacy-gate: PASS"


def _attacks(auc: float = 0.55, tpr_001: float = 0.002, tpr_01: float = 0.012) -> dict[str, Any]:
    return {
        "lira_online": {"auc": 0.52, "tpr_at_fpr": {"0.001": 0.001, "0.01": 0.01}},
        "rmia_offline": {"auc": auc, "tpr_at_fpr": {"0.001": tpr_001, "0.01": tpr_01}},
    }


ISOLATED = [
    pytest.param({"audit.reference_models": 16}, "min_reference_models", 16, 32, id="min_k"),
    pytest.param(
        {"summary.noise_floor": {"max_patient_auc_q95": 0.92}},
        "noise_floor",
        0.92,
        0.9,
        id="noise_floor",
    ),
    pytest.param({"summary.patient_auc": {"max": 0.97}}, "max_patient_auc", 0.97, 0.95, id="auc"),
    pytest.param(
        {"summary.at_risk_p_values": [1e-9] * 11}, "max_patients_at_risk", 11, 10, id="count"
    ),
    pytest.param(
        {"audit.patients": 500, "audit.records": 1000, "summary.at_risk_p_values": [1e-9] * 6},
        "max_fraction_at_risk",
        6 / 500,
        0.01,
        id="fraction",
    ),
    pytest.param(
        {"aggregate.attacks": _attacks(auc=0.65)}, "max_aggregate_auc", 0.65, 0.6, id="agg_auc"
    ),
    pytest.param(
        {"aggregate.attacks": _attacks(tpr_001=0.05)},
        "max_aggregate_tpr_at_fpr",
        {"0.001": 0.05},
        {"0.001": 0.01},
        id="agg_tpr",
    ),
    pytest.param(
        {"subgroups.sex.groups.F": _group(1.5, 0.001)},
        "max_subgroup_relative_change",
        1.5,
        1.0,
        id="subgroup",
    ),
    pytest.param(
        {"summary.power": {"count_pairs": [[8, 8, 10_000]]}},
        "max_detectable_auc",
        _detectable(16),
        0.999,
        id="detectable",
    ),
]


def test_every_registered_rule_has_an_isolated_case() -> None:
    """A rule added to the registry needs its case here (the contract the gate keeps)."""
    assert {case.values[1] for case in ISOLATED} == set(RULES)


@pytest.mark.parametrize(("changes", "rule", "value", "limit"), ISOLATED)
def test_each_rule_violated_in_isolation(
    changes: dict[str, Any], rule: str, value: Any, limit: Any
) -> None:
    decision = decide(_report(**changes), ALL_RULES)
    assert decision.status is Status.FAIL
    assert decision.status.exit_code == 1
    assert rules_of(decision) == [rule]
    (violation,) = decision.violations
    assert violation.value == pytest.approx(value)
    assert violation.limit == pytest.approx(limit)
    assert violation.message
    as_dict = decision.to_dict()
    assert as_dict["status"] == "fail"
    assert as_dict["violations"][0]["rule"] == rule
    assert decision.one_line() == f"privacy-gate: FAIL ({rule})"


def test_a_rule_left_out_is_not_checked() -> None:
    report = _report(
        **{"summary.patient_auc": {"max": 0.999}, "summary.power": {"count_pairs": [[2, 2, 9]]}}
    )
    config = parse_config({"gate": {"max_aggregate_auc": 0.6}})
    assert decide(report, config).passed


def test_every_violation_is_collected() -> None:
    report = _report(
        **{
            "audit.reference_models": 8,
            "summary.patient_auc": {"max": 0.99},
            "summary.power": {"count_pairs": [[4, 4, 10_000]]},
            "aggregate.attacks": _attacks(auc=0.7),
        }
    )
    decision = decide(report, ALL_RULES)
    assert set(rules_of(decision)) == {
        "min_reference_models",
        "max_patient_auc",
        "max_detectable_auc",
        "max_aggregate_auc",
    }


def test_limits_are_inclusive() -> None:
    report = _report(
        **{
            "summary.patient_auc": {"max": 0.95},
            "aggregate.attacks": _attacks(auc=0.6, tpr_001=0.01),
            "audit.reference_models": 32,
        }
    )
    assert decide(report, ALL_RULES).passed


def test_evaluate_gate_does_not_mutate_the_report() -> None:
    report = _report(**{"summary.at_risk_p_values": [0.3, 1e-9, 0.01]})
    before = copy.deepcopy(report)
    decide(report, ALL_RULES)
    assert report == before


# --- fail closed on missing evidence -------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ({"max_aggregate_auc": 0.6}, {"max_aggregate_auc": 0.6}),
        (
            {"max_aggregate_tpr_at_fpr": {0.001: 0.01}},
            {"max_aggregate_tpr_at_fpr": {"0.001": 0.01}},
        ),
        (
            {"max_aggregate_auc": 0.6, "max_aggregate_tpr_at_fpr": {0.001: 0.01}},
            {"max_aggregate_auc": 0.6, "max_aggregate_tpr_at_fpr": {"0.001": 0.01}},
        ),
    ],
    ids=["auc", "tpr", "both"],
)
def test_missing_aggregate_fails_closed(gate: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every aggregate rule the policy checks is reported, each with its own limit."""
    decision = decide(_report(aggregate=None), parse_config({"gate": gate}))
    assert decision.status is Status.FAIL
    got = {v.rule: v.limit for v in decision.violations}
    assert got == expected
    for violation in decision.violations:
        assert violation.value is None
        assert "target_scores" in violation.message


def test_missing_aggregate_without_aggregate_rule_passes() -> None:
    assert decide(_report(aggregate=None), parse_config({"gate": {"max_detectable_auc": 0.9999}}))


def test_tpr_at_an_fpr_the_audit_lacks_fails_closed() -> None:
    attacks = {"lira_online": {"auc": 0.55, "tpr_at_fpr": {"0.01": 0.0}}}
    decision = decide(_report(**{"aggregate.attacks": attacks}), ALL_RULES)
    assert rules_of(decision) == ["max_aggregate_tpr_at_fpr"]
    assert decision.violations[0].value is None
    assert "0.001" in decision.violations[0].message


@pytest.mark.parametrize(
    "power", [None, {}, {"count_pairs": []}], ids=["none", "empty", "no-pairs"]
)
def test_missing_power_fails_closed(power: Any) -> None:
    report = _report()
    if power is None:
        del report["summary"]["power"]
    else:
        report["summary"]["power"] = power
    decision = decide(report, ALL_RULES)
    assert rules_of(decision) == ["max_detectable_auc"]
    assert decision.violations[0].value is None
    assert "does not state its IN/OUT counts" in decision.violations[0].message


def _column(tail: int, **groups: dict[str, Any]) -> dict[str, Any]:
    """A column whose published groups expect the tail in proportion to their sizes."""
    tested = [g for g in groups.values() if g["status"] == "tested"]
    total = sum(g["size"] for g in tested)
    groups = {
        v: {**g, "expected": tail * g["size"] / total} if g["status"] == "tested" else g
        for v, g in groups.items()
    }
    return {"tail_patients": tail, "groups": groups}


SMALL_AND_LARGE = {"rare": _group(0.5, 0.5, size=500), "common": _group(-0.05, 0.9, size=4500)}


@pytest.mark.parametrize(
    ("subgroups", "reason"),
    [
        ({}, "analysed no subgroup column"),
        # a hidden group is tested too (an exact test), but one group alone is no test
        ({"sex": _column(50, F=_group(5.0, 1e-9, status="too_small"))}, "1 tested group(s)"),
        ({"sex": _column(50, F=_group(5.0, 1e-9))}, "1 tested group(s)"),
        ({"site": _column(0, **SMALL_AND_LARGE)}, "holds no patient"),
        # One tail patient: even all of it in "rare" (share 0.1) has p = 0.1 * 2 tests.
        ({"site": _column(1, **SMALL_AND_LARGE)}, "would not be significant"),
    ],
    ids=["no-columns", "none-tested", "one-group", "empty-tail", "tiny-tail"],
)
def test_subgroup_rule_without_evidence_fails_closed(subgroups: Any, reason: str) -> None:
    decision = decide(_report(subgroups=subgroups), ALL_RULES)
    assert rules_of(decision) == ["max_subgroup_relative_change"]
    assert decision.violations[0].value is None
    assert reason in decision.violations[0].message
    assert "HINT" in decision.violations[0].message or reason == "holds no patient"


def test_a_tail_big_enough_for_the_extreme_outcome_is_testable() -> None:
    # Five tail patients all in "rare" (share 0.1): binomial p = 1e-5, x 2 tests < 0.05.
    decision = decide(_report(subgroups={"site": _column(5, **SMALL_AND_LARGE)}), ALL_RULES)
    assert decision.passed


def test_subgroup_needs_significance_after_bonferroni() -> None:
    def column(change: float, p_adjusted: float) -> dict[str, Any]:
        return {
            "site": _column(
                50,
                rare=_group(change, p_adjusted, size=500),
                common=_group(-0.3, 0.9, size=4500),
            )
        }

    assert rules_of(decide(_report(subgroups=column(3.0, 0.04)), ALL_RULES)) == [
        "max_subgroup_relative_change"
    ]
    assert decide(_report(subgroups=column(3.0, 0.06)), ALL_RULES).passed
    # A large change that is not significant passes; a significant small one too.
    assert decide(_report(subgroups=column(9.0, 0.2)), ALL_RULES).passed
    assert decide(_report(subgroups=column(0.9, 1e-12)), ALL_RULES).passed
    # The level is the policy's subgroup_alpha.
    strict = replace(ALL_RULES, gate=replace(ALL_RULES.gate, subgroup_alpha=0.01))
    assert decide(_report(subgroups=column(3.0, 0.02)), strict).passed


# --- under-powered audits ------------------------------------------------------------------


def test_too_few_reference_models_names_the_k_needed() -> None:
    report = _report(**{"audit.reference_models": 8, "audit.records": 3000})
    decision = decide(report, ALL_RULES)
    assert rules_of(decision) == ["min_reference_models"]
    message = decision.violations[0].message
    needed = reference_models_for_policy(ALL_RULES, 3000, 5000)
    assert needed is not None and needed % 2 == 0 and 32 <= needed <= 4096
    assert needed >= reference_models_needed(3000, 0.9)  # type: ignore[operator]
    assert "requires 32" in message
    assert f"needs at least {needed} reference models" in message


@pytest.mark.slow  # seconds of Monte Carlo or numerics: the full run (CI), not the fast lane
def test_reference_models_for_policy_is_the_largest_power_need() -> None:
    """Each power rule's need, found independently by scanning even K."""
    config = default_config()
    gate = config.gate
    for n in (500, 9105, 20_000):
        floor_need = reference_models_needed(n, 0.9)
        detect_need = next(
            k for k in range(4, 4097, 2) if _detectable(k, n) <= gate.limit("max_detectable_auc")
        )
        assert reference_models_for_policy(config, n, n) == max(floor_need, detect_need)
    # The pool: K = 64 suffices for 9,105 patients under the default policy.
    assert reference_models_for_policy(config, 9105, 9105) <= 64  # type: ignore[operator]
    no_detectable = with_limits(config, max_detectable_auc=None)
    assert reference_models_for_policy(no_detectable, 9105, 9105) == (
        reference_models_needed(9105, 0.9)
    )
    looser = parse_config({"gate": {"max_aggregate_auc": 0.6}})  # no patient or power rule
    assert reference_models_for_policy(looser, 9105, 9105) == 0


def test_reference_models_needed_grows_with_the_pool_and_a_stricter_limit() -> None:
    small, large = reference_models_needed(100, 0.9), reference_models_needed(100_000, 0.9)
    strict = reference_models_needed(3000, 0.7)
    assert small is not None and large is not None and strict is not None
    assert small <= reference_models_needed(3000, 0.9) <= large  # type: ignore[operator]
    assert strict > reference_models_needed(3000, 0.9)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("floor", "fails"), [(0.9, True), (0.95, True), (0.8999, False), (0.5, False)]
)
def test_noise_floor_at_or_above_the_lowest_limit_fails(floor: float, fails: bool) -> None:
    report = _report(**{"summary.noise_floor": {"max_patient_auc_q95": floor}})
    decision = decide(report, ALL_RULES)  # limits 0.95 and at_risk_auc 0.9
    assert (rules_of(decision) == ["noise_floor"]) is fails
    assert decision.passed is not fails
    if fails:
        violation = decision.violations[0]
        assert violation.value == floor
        assert violation.limit == 0.9
        assert "needs at least" in violation.message


def test_noise_floor_limit_is_the_lowest_patient_limit() -> None:
    report = _report(**{"summary.noise_floor": {"max_patient_auc_q95": 0.86}})
    config = parse_config({"risk": {"at_risk_auc": 0.9}, "gate": {"max_patient_auc": 0.85}})
    decision = decide(report, config)
    assert rules_of(decision) == ["noise_floor"]
    assert decision.violations[0].limit == 0.85
    # at_risk_auc counts only when a rule uses it.
    config = parse_config({"risk": {"at_risk_auc": 0.8}, "gate": {"max_patient_auc": 0.9}})
    assert decide(report, config).passed
    config = parse_config({"risk": {"at_risk_auc": 0.8}, "gate": {"max_fraction_at_risk": 0.5}})
    assert rules_of(decide(report, config)) == ["noise_floor"]


def test_noise_floor_is_not_checked_without_patient_level_rules() -> None:
    report = _report(**{"summary.noise_floor": {"max_patient_auc_q95": 0.999}})
    config = parse_config({"gate": {"max_aggregate_auc": 0.6}})
    assert decide(report, config).passed


# --- Benjamini-Hochberg recount ------------------------------------------------------------


@pytest.mark.parametrize(("fdr", "expected"), [(0.01, 1), (0.05, 1), (0.1, 2), (0.2, 3), (0.5, 3)])
def test_bh_recount_when_fdr_changes(fdr: float, expected: int) -> None:
    p_values = [0.001, 0.02, 0.04, 0.3]
    report = _report(**{"audit.patients": 10, "summary.at_risk_p_values": p_values})
    assert independent_bh(np.array(p_values), fdr, 10) == expected
    config = parse_config({"gate": {"max_patients_at_risk": 0, "fdr": fdr}})
    decision = decide(report, config)
    assert decision.patients_at_risk == expected
    assert decision.violations[0].value == expected
    assert f"FDR {fdr}" in decision.violations[0].message


def test_bh_uses_the_number_of_patients_not_of_stored_p_values() -> None:
    config = parse_config({"gate": {"max_patients_at_risk": 5}})
    few = decide(_report(**{"audit.patients": 2, "summary.at_risk_p_values": [0.01, 0.02]}), config)
    many = decide(
        _report(**{"audit.patients": 100, "summary.at_risk_p_values": [0.01, 0.02]}), config
    )
    assert few.patients_at_risk == 2
    assert many.patients_at_risk == 0


def test_status_exit_codes() -> None:
    assert [s.exit_code for s in Status] == [0, 1, 2]


# --- monotonicity (hypothesis) ----------------------------------------------------------------


@st.composite
def _reports(draw: st.DrawFn) -> dict[str, Any]:
    n_patients = draw(st.integers(1, 3000))
    unit = st.floats(0.5, 1.0)
    aggregate = None
    if draw(st.booleans()):
        attacks = {}
        for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, unique=True)):
            keys = draw(st.lists(st.sampled_from(FPR_KEYS), unique=True, min_size=1))
            attacks[name] = {
                "auc": draw(unit),
                "tpr_at_fpr": {k: draw(st.floats(0.0, 1.0)) for k in keys},
            }
        aggregate = {"attacks": attacks}
    groups = {
        f"g{i}": _group(
            draw(st.floats(-1.0, 10.0)),
            draw(st.floats(0.0, 1.0)),
            status=draw(st.sampled_from(["tested", "tested", "too_small", "missing"])),
            size=draw(st.integers(20, 2000)),
        )
        for i in range(draw(st.integers(0, 3)))
    }
    k = draw(st.sampled_from([4, 8, 16, 32, 64, 128]))
    return {
        "audit": {
            "reference_models": k,
            "records": n_patients * draw(st.integers(1, 3)),
            "patients": n_patients,
        },
        "summary": {
            "patient_auc": {"max": draw(unit)},
            "noise_floor": {"max_patient_auc_q95": draw(unit)},
            "at_risk_p_values": draw(st.lists(st.floats(0.0, 0.5), max_size=min(n_patients, 15))),
            "power": {"count_pairs": [[k // 2, k // 2, n_patients]]} if draw(st.booleans()) else {},
        },
        "aggregate": aggregate,
        "subgroups": {"col": _column(draw(st.integers(0, 60)), **groups)} if groups else {},
    }


@pytest.mark.slow  # seconds of Monte Carlo or numerics: the full run (CI), not the fast lane
@PROPERTY
@given(report=_reports(), policies=tight_and_loose(), at_risk=st.floats(0.6, 0.99))
def test_gate_is_monotone_in_its_thresholds_on_hand_built_reports(
    report: dict[str, Any], policies: tuple[GateConfig, GateConfig], at_risk: float
) -> None:
    assert_monotone(typed_report(report), RiskConfig(at_risk_auc=at_risk), *policies)


def test_a_small_group_cannot_hold_the_whole_tail() -> None:
    """40 patients, a tail of 30, a group of 10 (share 0.25), limit +20%: the most the group
    can show is 10 of 30 (+33%, binomial p = 0.29 x 2 tests), never significant, so the
    column is untestable and the rule fails closed. Assuming all 30 tail patients in the
    group (p = 0.25^30) called it testable and passed it."""
    strict = with_limits(ALL_RULES, max_subgroup_relative_change=0.2)
    groups = {"rare": _group(0.3, 0.5, size=10), "common": _group(-0.1, 0.9, size=30)}
    decision = decide(_report(subgroups={"site": _column(30, **groups)}), strict)
    assert rules_of(decision) == ["max_subgroup_relative_change"]
    assert "even 10 of them in group 'rare' would not be significant" in (
        decision.violations[0].message
    )


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"summary.noise_floor": {"max_patient_auc_q95": math.nan}}, "noise_floor"),
        ({"summary.patient_auc": {"max": math.nan}}, "max_patient_auc"),
        ({"aggregate.attacks": _attacks(auc=math.nan)}, "max_aggregate_auc"),
        ({"aggregate.attacks": _attacks(tpr_001=math.nan)}, "max_aggregate_tpr_at_fpr"),
    ],
    ids=["floor", "patient", "aggregate-auc", "aggregate-tpr"],
)
def test_a_nan_figure_never_passes_its_rule(changes: dict[str, Any], rule: str) -> None:
    """NaN compares False with every limit; written as "value > limit" it would pass."""
    assert rule in rules_of(decide(_report(**changes), ALL_RULES))


def test_a_nan_attack_cannot_hide_a_stronger_one() -> None:
    attacks = {"a": {"auc": math.nan, "tpr_at_fpr": {}}, "b": {"auc": 0.9, "tpr_at_fpr": {}}}
    config = parse_config({"gate": {"max_aggregate_auc": 0.6}})
    (violation,) = decide(_report(**{"aggregate.attacks": attacks}), config).violations
    assert violation.rule == "max_aggregate_auc" and math.isnan(violation.value)


def test_a_report_without_patients_is_an_error_not_a_division() -> None:
    with pytest.raises(ReportError, match="0 patients"):
        decide(_report(**{"audit.patients": 0}), ALL_RULES)


def test_reports_with_nan_or_infinity_are_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    for constant in ("NaN", "Infinity", "-Infinity"):
        path.write_text('{"schema_version": "2.0", "x": ' + constant + "}", encoding="utf-8")
        with pytest.raises(ReportError, match="non-finite number"):
            load_report(path)
