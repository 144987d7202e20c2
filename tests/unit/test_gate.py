"""The gate decision, on hand-built report figures and on real `pipeline.audit` reports.

Also the end-to-end noise-floor behaviour and the audit's invariants (record order,
no input mutation).
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sp_stats

from privacy_gate.at_risk import detectable_auc
from privacy_gate.config import AuditConfig, GateConfig, RiskConfig, default_config, parse_config
from privacy_gate.gate import Decision, Rule, Status, evaluate_gate, reference_models_for_policy
from privacy_gate.noise_floor import reference_models_needed
from privacy_gate.pipeline import AuditResult, audit
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.records import RecordTable, records_from_columns
from privacy_gate.signals import make_signals

PSEUDONYMS = Pseudonymizer(key=b"test-key")
FPR_KEYS = ("0.001", "0.01")
AGGREGATE_RULES = {Rule.MAX_AGGREGATE_AUC, Rule.MAX_AGGREGATE_TPR_AT_FPR}
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _rules(decision: Decision) -> list[Rule]:
    return [v.rule for v in decision.violations]


def _independent_bh(p_values: np.ndarray, q: float, m: int) -> int:
    """Benjamini-Hochberg step-up count, written out independently."""
    ordered = sorted(float(p) for p in p_values)
    count = 0
    for rank, p in enumerate(ordered, start=1):
        if p <= q * rank / m:
            count = rank
    return count


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
    decision = evaluate_gate(_report(), ALL_RULES)
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
    pytest.param({"audit.reference_models": 16}, Rule.MIN_REFERENCE_MODELS, 16, 32, id="min_k"),
    pytest.param(
        {"summary.noise_floor": {"max_patient_auc_q95": 0.92}},
        Rule.NOISE_FLOOR,
        0.92,
        0.9,
        id="noise_floor",
    ),
    pytest.param(
        {"summary.patient_auc": {"max": 0.97}}, Rule.MAX_PATIENT_AUC, 0.97, 0.95, id="auc"
    ),
    pytest.param(
        {"summary.at_risk_p_values": [1e-9] * 11}, Rule.MAX_PATIENTS_AT_RISK, 11, 10, id="count"
    ),
    pytest.param(
        {"audit.patients": 500, "audit.records": 1000, "summary.at_risk_p_values": [1e-9] * 6},
        Rule.MAX_FRACTION_AT_RISK,
        6 / 500,
        0.01,
        id="fraction",
    ),
    pytest.param(
        {"aggregate.attacks": _attacks(auc=0.65)}, Rule.MAX_AGGREGATE_AUC, 0.65, 0.6, id="agg_auc"
    ),
    pytest.param(
        {"aggregate.attacks": _attacks(tpr_001=0.05)},
        Rule.MAX_AGGREGATE_TPR_AT_FPR,
        {"0.001": 0.05},
        {"0.001": 0.01},
        id="agg_tpr",
    ),
    pytest.param(
        {"subgroups.sex.groups.F": _group(1.5, 0.001)},
        Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
        1.5,
        1.0,
        id="subgroup",
    ),
    pytest.param(
        {"summary.power": {"count_pairs": [[8, 8, 10_000]]}},
        Rule.MAX_DETECTABLE_AUC,
        _detectable(16),
        0.999,
        id="detectable",
    ),
]


@pytest.mark.parametrize(("changes", "rule", "value", "limit"), ISOLATED)
def test_each_rule_violated_in_isolation(
    changes: dict[str, Any], rule: Rule, value: Any, limit: Any
) -> None:
    decision = evaluate_gate(_report(**changes), ALL_RULES)
    assert decision.status is Status.FAIL
    assert decision.status.exit_code == 1
    assert _rules(decision) == [rule]
    (violation,) = decision.violations
    assert violation.value == pytest.approx(value)
    assert violation.limit == pytest.approx(limit)
    assert violation.message
    as_dict = decision.to_dict()
    assert as_dict["status"] == "fail"
    assert as_dict["violations"][0]["rule"] == rule.value
    assert decision.one_line() == f"privacy-gate: FAIL ({rule.value})"


def test_a_rule_left_out_is_not_checked() -> None:
    report = _report(
        **{"summary.patient_auc": {"max": 0.999}, "summary.power": {"count_pairs": [[2, 2, 9]]}}
    )
    config = parse_config({"gate": {"max_aggregate_auc": 0.6}})
    assert evaluate_gate(report, config).passed


def test_every_violation_is_collected() -> None:
    report = _report(
        **{
            "audit.reference_models": 8,
            "summary.patient_auc": {"max": 0.99},
            "summary.power": {"count_pairs": [[4, 4, 10_000]]},
            "aggregate.attacks": _attacks(auc=0.7),
        }
    )
    decision = evaluate_gate(report, ALL_RULES)
    assert set(_rules(decision)) == {
        Rule.MIN_REFERENCE_MODELS,
        Rule.MAX_PATIENT_AUC,
        Rule.MAX_DETECTABLE_AUC,
        Rule.MAX_AGGREGATE_AUC,
    }


def test_limits_are_inclusive() -> None:
    report = _report(
        **{
            "summary.patient_auc": {"max": 0.95},
            "aggregate.attacks": _attacks(auc=0.6, tpr_001=0.01),
            "audit.reference_models": 32,
        }
    )
    assert evaluate_gate(report, ALL_RULES).passed


def test_evaluate_gate_does_not_mutate_the_report() -> None:
    report = _report(**{"summary.at_risk_p_values": [0.3, 1e-9, 0.01]})
    before = copy.deepcopy(report)
    evaluate_gate(report, ALL_RULES)
    assert report == before


# --- fail closed on missing evidence -------------------------------------------------------


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ({"max_aggregate_auc": 0.6}, {Rule.MAX_AGGREGATE_AUC: 0.6}),
        (
            {"max_aggregate_tpr_at_fpr": {0.001: 0.01}},
            {Rule.MAX_AGGREGATE_TPR_AT_FPR: {"0.001": 0.01}},
        ),
        (
            {"max_aggregate_auc": 0.6, "max_aggregate_tpr_at_fpr": {0.001: 0.01}},
            {Rule.MAX_AGGREGATE_AUC: 0.6, Rule.MAX_AGGREGATE_TPR_AT_FPR: {"0.001": 0.01}},
        ),
    ],
    ids=["auc", "tpr", "both"],
)
def test_missing_aggregate_fails_closed(gate: dict[str, Any], expected: dict[Rule, Any]) -> None:
    """Every aggregate rule the policy checks is reported, each with its own limit."""
    decision = evaluate_gate(_report(aggregate=None), parse_config({"gate": gate}))
    assert decision.status is Status.FAIL
    got = {v.rule: v.limit for v in decision.violations}
    assert got == expected
    for violation in decision.violations:
        assert violation.value is None
        assert "target_scores" in violation.message


def test_missing_aggregate_without_aggregate_rule_passes() -> None:
    assert evaluate_gate(
        _report(aggregate=None), parse_config({"gate": {"max_detectable_auc": 0.9999}})
    )


def test_tpr_at_an_fpr_the_audit_lacks_fails_closed() -> None:
    attacks = {"lira_online": {"auc": 0.55, "tpr_at_fpr": {"0.01": 0.0}}}
    decision = evaluate_gate(_report(**{"aggregate.attacks": attacks}), ALL_RULES)
    assert _rules(decision) == [Rule.MAX_AGGREGATE_TPR_AT_FPR]
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
    decision = evaluate_gate(report, ALL_RULES)
    assert _rules(decision) == [Rule.MAX_DETECTABLE_AUC]
    assert decision.violations[0].value is None
    assert "does not state its IN/OUT counts" in decision.violations[0].message


def _column(tail: int, **groups: dict[str, Any]) -> dict[str, Any]:
    return {"tail_patients": tail, "groups": groups}


SMALL_AND_LARGE = {"rare": _group(0.5, 0.5, size=500), "common": _group(-0.05, 0.9, size=4500)}


@pytest.mark.parametrize(
    ("subgroups", "reason"),
    [
        ({}, "analysed no subgroup column"),
        ({"sex": _column(50, F=_group(5.0, 1e-9, status="too_small"))}, "0 tested group(s)"),
        ({"sex": _column(50, F=_group(5.0, 1e-9))}, "1 tested group(s)"),
        ({"site": _column(0, **SMALL_AND_LARGE)}, "holds no patient"),
        # One tail patient: even all of it in "rare" (share 0.1) has p = 0.1 * 2 tests.
        ({"site": _column(1, **SMALL_AND_LARGE)}, "would not be significant"),
    ],
    ids=["no-columns", "none-tested", "one-group", "empty-tail", "tiny-tail"],
)
def test_subgroup_rule_without_evidence_fails_closed(subgroups: Any, reason: str) -> None:
    decision = evaluate_gate(_report(subgroups=subgroups), ALL_RULES)
    assert _rules(decision) == [Rule.MAX_SUBGROUP_RELATIVE_CHANGE]
    assert decision.violations[0].value is None
    assert reason in decision.violations[0].message
    assert "HINT" in decision.violations[0].message or reason == "holds no patient"


def test_a_tail_big_enough_for_the_extreme_outcome_is_testable() -> None:
    # Five tail patients all in "rare" (share 0.1): binomial p = 1e-5, x 2 tests < 0.05.
    decision = evaluate_gate(_report(subgroups={"site": _column(5, **SMALL_AND_LARGE)}), ALL_RULES)
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

    assert _rules(evaluate_gate(_report(subgroups=column(3.0, 0.04)), ALL_RULES)) == [
        Rule.MAX_SUBGROUP_RELATIVE_CHANGE
    ]
    assert evaluate_gate(_report(subgroups=column(3.0, 0.06)), ALL_RULES).passed
    # A large change that is not significant passes; a significant small one too.
    assert evaluate_gate(_report(subgroups=column(9.0, 0.2)), ALL_RULES).passed
    assert evaluate_gate(_report(subgroups=column(0.9, 1e-12)), ALL_RULES).passed
    # The level is the policy's subgroup_alpha.
    strict = replace(ALL_RULES, gate=replace(ALL_RULES.gate, subgroup_alpha=0.01))
    assert evaluate_gate(_report(subgroups=column(3.0, 0.02)), strict).passed


# --- under-powered audits ------------------------------------------------------------------


def test_too_few_reference_models_names_the_k_needed() -> None:
    report = _report(**{"audit.reference_models": 8, "audit.records": 3000})
    decision = evaluate_gate(report, ALL_RULES)
    assert _rules(decision) == [Rule.MIN_REFERENCE_MODELS]
    message = decision.violations[0].message
    needed = reference_models_for_policy(ALL_RULES.gate, 0.9, 3000, 5000)
    assert needed is not None and needed % 2 == 0 and 32 <= needed <= 4096
    assert needed >= reference_models_needed(3000, 0.9)  # type: ignore[operator]
    assert "requires 32" in message
    assert f"needs at least {needed} reference models" in message


def test_reference_models_for_policy_is_the_largest_power_need() -> None:
    """Each power rule's need, found independently by scanning even K."""
    gate = default_config().gate
    for n in (500, 9105, 20_000):
        floor_need = reference_models_needed(n, 0.9)
        detect_need = next(
            k for k in range(4, 4097, 2) if _detectable(k, n) <= gate.max_detectable_auc
        )
        assert reference_models_for_policy(gate, 0.9, n, n) == max(floor_need, detect_need)
    # The issue's pool: K = 64 suffices for 9,105 patients under the default policy.
    assert reference_models_for_policy(gate, 0.9, 9105, 9105) <= 64  # type: ignore[operator]
    assert reference_models_for_policy(replace(gate, max_detectable_auc=None), 0.9, 9105, 9105) == (
        reference_models_needed(9105, 0.9)
    )
    looser = GateConfig(max_aggregate_auc=0.6)  # no patient-level and no power rule
    assert reference_models_for_policy(looser, 0.9, 9105, 9105) == 0


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
    decision = evaluate_gate(report, ALL_RULES)  # limits 0.95 and at_risk_auc 0.9
    assert (_rules(decision) == [Rule.NOISE_FLOOR]) is fails
    assert decision.passed is not fails
    if fails:
        violation = decision.violations[0]
        assert violation.value == floor
        assert violation.limit == 0.9
        assert "needs at least" in violation.message


def test_noise_floor_limit_is_the_lowest_patient_limit() -> None:
    report = _report(**{"summary.noise_floor": {"max_patient_auc_q95": 0.86}})
    config = parse_config({"risk": {"at_risk_auc": 0.9}, "gate": {"max_patient_auc": 0.85}})
    decision = evaluate_gate(report, config)
    assert _rules(decision) == [Rule.NOISE_FLOOR]
    assert decision.violations[0].limit == 0.85
    # at_risk_auc counts only when a rule uses it.
    config = parse_config({"risk": {"at_risk_auc": 0.8}, "gate": {"max_patient_auc": 0.9}})
    assert evaluate_gate(report, config).passed
    config = parse_config({"risk": {"at_risk_auc": 0.8}, "gate": {"max_fraction_at_risk": 0.5}})
    assert _rules(evaluate_gate(report, config)) == [Rule.NOISE_FLOOR]


def test_noise_floor_is_not_checked_without_patient_level_rules() -> None:
    report = _report(**{"summary.noise_floor": {"max_patient_auc_q95": 0.999}})
    config = parse_config({"gate": {"max_aggregate_auc": 0.6}})
    assert evaluate_gate(report, config).passed


# --- Benjamini-Hochberg recount ------------------------------------------------------------


@pytest.mark.parametrize(("fdr", "expected"), [(0.01, 1), (0.05, 1), (0.1, 2), (0.2, 3), (0.5, 3)])
def test_bh_recount_when_fdr_changes(fdr: float, expected: int) -> None:
    p_values = [0.001, 0.02, 0.04, 0.3]
    report = _report(**{"audit.patients": 10, "summary.at_risk_p_values": p_values})
    assert _independent_bh(np.array(p_values), fdr, 10) == expected
    config = parse_config({"gate": {"max_patients_at_risk": 0, "fdr": fdr}})
    decision = evaluate_gate(report, config)
    assert decision.patients_at_risk == expected
    assert decision.violations[0].value == expected
    assert f"FDR {fdr}" in decision.violations[0].message


def test_bh_uses_the_number_of_patients_not_of_stored_p_values() -> None:
    config = parse_config({"gate": {"max_patients_at_risk": 5}})
    few = evaluate_gate(
        _report(**{"audit.patients": 2, "summary.at_risk_p_values": [0.01, 0.02]}), config
    )
    many = evaluate_gate(
        _report(**{"audit.patients": 100, "summary.at_risk_p_values": [0.01, 0.02]}), config
    )
    assert few.patients_at_risk == 2
    assert many.patients_at_risk == 0


def test_status_exit_codes() -> None:
    assert [s.exit_code for s in Status] == [0, 1, 2]


# --- monotonicity (hypothesis) ----------------------------------------------------------------


@st.composite
def _tight_and_loose(draw: st.DrawFn) -> tuple[GateConfig, GateConfig]:
    """A random policy and a looser one (each limit relaxed, kept or dropped)."""

    def maybe(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.none() | strategy)

    tight: dict[str, Any] = {
        "max_patient_auc": maybe(st.floats(0.5, 1.0)),
        "max_patients_at_risk": maybe(st.integers(0, 30)),
        "max_fraction_at_risk": maybe(st.floats(0.0, 0.2)),
        "max_aggregate_auc": maybe(st.floats(0.5, 1.0)),
        "max_aggregate_tpr_at_fpr": maybe(
            st.dictionaries(st.sampled_from([0.001, 0.01]), st.floats(0.0, 1.0), min_size=1)
        ),
        "max_subgroup_relative_change": maybe(st.floats(0.0, 10.0)),
        "min_reference_models": maybe(st.integers(2, 128)),
        "max_detectable_auc": maybe(st.floats(0.9, 0.99999)),
        "fdr": draw(st.floats(1e-3, 0.5)),
        "subgroup_alpha": draw(st.floats(1e-3, 0.5)),
    }
    loose = dict(tight)
    drop = st.booleans()
    for name, hi in (
        ("max_patient_auc", 1.0),
        ("max_fraction_at_risk", 1.0),
        ("max_aggregate_auc", 1.0),
        ("max_subgroup_relative_change", 1e9),
        ("max_detectable_auc", 1.0),
    ):
        if tight[name] is not None:
            loose[name] = None if draw(drop) else min(hi, tight[name] + draw(st.floats(0, 0.3)))
    if tight["max_patients_at_risk"] is not None:
        loose["max_patients_at_risk"] = (
            None if draw(drop) else tight["max_patients_at_risk"] + draw(st.integers(0, 10))
        )
    if tight["min_reference_models"] is not None:
        loose["min_reference_models"] = (
            None if draw(drop) else max(2, tight["min_reference_models"] - draw(st.integers(0, 64)))
        )
    if tight["max_aggregate_tpr_at_fpr"] is not None:
        relaxed = {
            f: min(1.0, t + draw(st.floats(0, 0.3)))
            for f, t in tight["max_aggregate_tpr_at_fpr"].items()
            if not draw(drop)
        }
        loose["max_aggregate_tpr_at_fpr"] = relaxed or None
    # A smaller FDR or subgroup_alpha loosens the count and the subgroup test but costs
    # power, and the power checks fail closed: neither is monotone where those are on.
    if tight["max_detectable_auc"] is None:
        loose["fdr"] = tight["fdr"] * draw(st.floats(0.01, 1.0))
    if tight["max_subgroup_relative_change"] is None:
        loose["subgroup_alpha"] = tight["subgroup_alpha"] * draw(st.floats(0.01, 1.0))

    def build(kwargs: dict[str, Any]) -> GateConfig:
        tpr = kwargs["max_aggregate_tpr_at_fpr"]
        return GateConfig(
            **{
                **kwargs,
                "max_aggregate_tpr_at_fpr": None if tpr is None else tuple(sorted(tpr.items())),
            }
        )

    return build(tight), build(loose)


def _assert_monotone(
    report: dict[str, Any], risk: RiskConfig, tight: GateConfig, loose: GateConfig
) -> None:
    strict = evaluate_gate(report, AuditConfig(risk=risk, gate=tight))
    lenient = evaluate_gate(report, AuditConfig(risk=risk, gate=loose))
    event(f"strict {strict.status.value}, lenient {lenient.status.value}")
    # Loosening never turns pass into fail; tightening never turns fail into pass.
    if strict.passed:
        assert lenient.passed, (lenient.violations, loose)
    if not lenient.passed:
        assert not strict.passed
    assert lenient.patients_at_risk is not None and strict.patients_at_risk is not None
    assert lenient.patients_at_risk <= strict.patients_at_risk

    def kinds(decision: Decision) -> set[str]:
        return {"aggregate" if r in AGGREGATE_RULES else r.value for r in _rules(decision)}

    assert kinds(lenient) <= kinds(strict)


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


@PROPERTY
@given(report=_reports(), policies=_tight_and_loose(), at_risk=st.floats(0.6, 0.99))
def test_gate_is_monotone_in_its_thresholds_on_hand_built_reports(
    report: dict[str, Any], policies: tuple[GateConfig, GateConfig], at_risk: float
) -> None:
    _assert_monotone(report, RiskConfig(at_risk_auc=at_risk), *policies)


# --- real pipeline reports ----------------------------------------------------------------


def make_data(
    n: int,
    k: int,
    *,
    seed: int = 0,
    effect: float = 0.0,
    n_exposed: int = 0,
    records_per_patient: int = 2,
    target_effect: float | None = 1.0,
) -> tuple[Any, RecordTable]:
    """Gaussian scores, each record IN for exactly k/2 models; the first ``n_exposed``
    records (all in subgroup site=rare, which holds the first n//10 records) get a
    membership effect. Target members are the even records."""
    rng = np.random.default_rng(seed)
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    shift = np.zeros(n)
    shift[:n_exposed] = effect
    scores = rng.standard_normal((k, n)) + masks * shift
    kwargs: dict[str, Any] = {}
    if target_effect is not None:
        members = np.arange(n) % 2 == 0
        kwargs = {
            "target_scores": rng.standard_normal(n) + target_effect * members,
            "target_members": members,
        }
    signals = make_signals(scores, masks, **kwargs)
    site = ["rare" if i < n // 10 else "common" for i in range(n)]
    records = records_from_columns(
        [f"rec-{i}" for i in range(n)],
        [f"pat-{i // records_per_patient}" for i in range(n)],
        {"site": site},
    )
    return signals, records


REAL_CONFIG = parse_config(
    {
        "subgroups": ["site"],
        "risk": {"at_risk_auc": 0.9, "tail_quantile": 0.9, "min_group_size": 20},
        "gate": {"max_patient_auc": 0.999999},
    }
)


@functools.cache
def _real_data() -> tuple[Any, RecordTable]:
    return make_data(600, 64, effect=3.0, n_exposed=40)


@functools.cache
def _real_audit() -> AuditResult:
    return audit(*_real_data(), REAL_CONFIG, pseudonymizer=PSEUDONYMS)


def _observed(report: dict[str, Any]) -> dict[str, Any]:
    summary, attacks = report["summary"], report["aggregate"]["attacks"]
    rare = report["subgroups"]["site"]["groups"]["rare"]
    return {
        "max_patient_auc": summary["patient_auc"]["max"],
        "patients_at_risk": summary["patients_at_risk"],
        "fraction_at_risk": summary["fraction_at_risk"],
        "aggregate_auc": max(a["auc"] for a in attacks.values()),
        "tpr_01": max(a["tpr_at_fpr"]["0.01"] for a in attacks.values()),
        "rare_change": rare["relative_change"],
        "detectable": summary["power"]["detectable_auc"],
    }


def test_real_report_figures_are_what_the_rules_need() -> None:
    result = _real_audit()
    report = result.report
    seen = _observed(report)
    assert report["summary"]["noise_floor"]["max_patient_auc_q95"] < 0.9
    assert seen["max_patient_auc"] > 0.99
    assert seen["patients_at_risk"] >= 5
    assert seen["aggregate_auc"] > 0.6
    assert seen["tpr_01"] > 0.0
    assert seen["rare_change"] > 3.0
    assert report["subgroups"]["site"]["groups"]["rare"]["status"] == "tested"
    # Re-evaluating the same policy reproduces the audit's decision.
    again = evaluate_gate(report, REAL_CONFIG)
    assert again.status is result.decision.status
    assert again.violations == result.decision.violations
    assert again.patients_at_risk == report["summary"]["patients_at_risk"]


def _below(x: float) -> float:
    return x - 1e-6


REAL_ISOLATED = [
    (
        "max_patient_auc",
        lambda s: _below(s["max_patient_auc"]),
        "max_patient_auc",
        Rule.MAX_PATIENT_AUC,
    ),
    (
        "max_patients_at_risk",
        lambda s: s["patients_at_risk"] - 1,
        "patients_at_risk",
        Rule.MAX_PATIENTS_AT_RISK,
    ),
    (
        "max_fraction_at_risk",
        lambda s: _below(s["fraction_at_risk"]),
        "fraction_at_risk",
        Rule.MAX_FRACTION_AT_RISK,
    ),
    (
        "max_aggregate_auc",
        lambda s: _below(s["aggregate_auc"]),
        "aggregate_auc",
        Rule.MAX_AGGREGATE_AUC,
    ),
    (
        "max_subgroup_relative_change",
        lambda s: _below(s["rare_change"]),
        "rare_change",
        Rule.MAX_SUBGROUP_RELATIVE_CHANGE,
    ),
    (
        "max_detectable_auc",
        lambda s: _below(s["detectable"]),
        "detectable",
        Rule.MAX_DETECTABLE_AUC,
    ),
    ("min_reference_models", lambda s: 66, None, Rule.MIN_REFERENCE_MODELS),
]


@pytest.mark.parametrize(
    ("name", "limit_of", "seen_key", "rule"), REAL_ISOLATED, ids=[r[0] for r in REAL_ISOLATED]
)
def test_real_report_each_rule_violated_in_isolation(
    name: str, limit_of: Any, seen_key: str | None, rule: Rule
) -> None:
    report = _real_audit().report
    seen = _observed(report)
    limit = limit_of(seen)
    config = replace(REAL_CONFIG, gate=parse_config({"gate": {name: limit}}).gate)
    decision = evaluate_gate(report, config)
    assert _rules(decision) == [rule]
    violation = decision.violations[0]
    assert violation.limit == limit
    expected = 64 if seen_key is None else seen[seen_key]
    assert violation.value == pytest.approx(expected)
    # ...and the limit at the observed value passes.
    if seen_key is not None:
        config = replace(REAL_CONFIG, gate=parse_config({"gate": {name: seen[seen_key]}}).gate)
        assert evaluate_gate(report, config).passed


def test_real_report_tpr_rule_in_isolation() -> None:
    report = _real_audit().report
    tpr = _observed(report)["tpr_01"]
    config = replace(
        REAL_CONFIG,
        gate=parse_config({"gate": {"max_aggregate_tpr_at_fpr": {0.01: _below(tpr)}}}).gate,
    )
    decision = evaluate_gate(report, config)
    assert _rules(decision) == [Rule.MAX_AGGREGATE_TPR_AT_FPR]
    assert decision.violations[0].value == {"0.01": pytest.approx(tpr)}


def _independent_p_values(result: AuditResult, at_risk: float) -> np.ndarray:
    """DESIGN.md's at-risk p-values from the raw scores: per record the larger of the
    pooled and the Welch noncentral-t tail at the boundary d0 = Phi^-1(at_risk), scipy's
    t statistics; Bonferroni within the patient."""
    signals, _ = _real_data()
    d0 = float(special.ndtri(at_risk))
    p_record = np.ones(signals.n_records)
    for j in range(signals.n_records):
        x_in = signals.scores[signals.masks[:, j], j].astype(float)
        x_out = signals.scores[~signals.masks[:, j], j].astype(float)
        n, m = len(x_in), len(x_out)
        v_in, v_out = x_in.var(ddof=1), x_out.var(ddof=1)
        pooled = sp_stats.ttest_ind(x_in, x_out, equal_var=True).statistic
        welch = sp_stats.ttest_ind(x_in, x_out, equal_var=False).statistic
        a, b = v_in / n, v_out / m
        df_welch = (a + b) ** 2 / (a**2 / (n - 1) + b**2 / (m - 1))
        p_pooled = sp_stats.nct.sf(pooled, n + m - 2, math.sqrt(2) * d0 / math.sqrt(1 / n + 1 / m))
        p_welch = sp_stats.nct.sf(welch, df_welch, d0 * math.sqrt(v_in + v_out) / math.sqrt(a + b))
        p_record[j] = max(p_pooled, p_welch)
    n_patients = len(result.patient_keys)
    smallest = np.ones(n_patients)
    counts = np.zeros(n_patients)
    for record, patient in enumerate(result.patient_index):
        smallest[patient] = min(smallest[patient], p_record[record])
        counts[patient] += 1
    return np.minimum(smallest * counts, 1.0)


@pytest.mark.parametrize("fdr", [0.001, 0.01, 0.05, 0.2, 0.5])
def test_real_report_bh_recount_matches_an_independent_count(fdr: float) -> None:
    result = _real_audit()
    p_values = _independent_p_values(result, 0.9)
    expected = _independent_bh(p_values, fdr, len(p_values))
    config = replace(
        REAL_CONFIG, gate=parse_config({"gate": {"max_patients_at_risk": 0, "fdr": fdr}}).gate
    )
    decision = evaluate_gate(result.report, config)
    assert decision.patients_at_risk == expected
    if fdr == 0.05:
        assert expected == result.report["summary"]["patients_at_risk"]


def test_real_report_bh_count_grows_with_fdr() -> None:
    report = _real_audit().report
    counts = [
        evaluate_gate(
            report,
            replace(
                REAL_CONFIG, gate=parse_config({"gate": {"max_patients_at_risk": 0, "fdr": q}}).gate
            ),
        ).patients_at_risk
        for q in (0.001, 0.05, 0.5)
    ]
    assert counts == sorted(counts)
    assert counts[0] is not None and counts[0] > 0


@PROPERTY
@given(policies=_tight_and_loose())
def test_gate_is_monotone_in_its_thresholds_on_a_real_report(
    policies: tuple[GateConfig, GateConfig],
) -> None:
    _assert_monotone(_real_audit().report, REAL_CONFIG.risk, *policies)


# --- end-to-end noise floor ------------------------------------------------------------------


def _default_without_aggregate() -> AuditConfig:
    data = default_config().to_dict()
    data["gate"]["max_aggregate_auc"] = None
    data["gate"]["max_aggregate_tpr_at_fpr"] = None
    return parse_config(data)


@functools.cache
def _null_audit(k: int) -> AuditResult:
    signals, records = make_data(3000, k, seed=11, target_effect=None)
    return audit(signals, records, _default_without_aggregate(), pseudonymizer=PSEUDONYMS)


def test_null_data_with_64_models_has_no_patient_confidently_at_risk() -> None:
    result = _null_audit(64)
    summary = result.report["summary"]
    assert result.report["audit"]["reference_models"] == 64
    assert summary["patients_at_risk"] == 0
    assert result.decision.patients_at_risk == 0
    floor = summary["noise_floor"]["max_patient_auc_q95"]
    assert 0.6 < floor < 0.9  # well below at_risk_auc, far above 0.5
    assert summary["patient_auc"]["max"] < 0.9
    assert result.decision.passed, result.decision.violations  # the default policy
    assert result.report["aggregate"] is None


def test_null_data_with_8_models_fails_as_under_powered() -> None:
    result = _null_audit(8)
    decision = result.decision
    assert decision.status is Status.FAIL
    rules = set(_rules(decision))
    assert {Rule.NOISE_FLOOR, Rule.MAX_DETECTABLE_AUC} <= rules
    floor = result.report["summary"]["noise_floor"]["max_patient_auc_q95"]
    assert floor >= 0.9
    needed = reference_models_for_policy(default_config().gate, 0.9, 3000, 1500)
    assert needed == result.report["summary"]["power"]["reference_models_needed"]
    for violation in decision.violations:
        if violation.rule in (Rule.NOISE_FLOOR, Rule.MAX_DETECTABLE_AUC):
            found = re.search(r"needs at least (\d+) reference models", violation.message)
            assert found is not None, violation.message
            assert int(found.group(1)) == needed
            assert int(found.group(1)) > 8


def _issue_pool(seed: int, n_leaky: int) -> tuple[Any, RecordTable]:
    """The issue's case: 9,105 one-record patients, K = 64, a release candidate."""
    return make_data(
        9105,
        64,
        seed=seed,
        effect=4.0,
        n_exposed=n_leaky,
        records_per_patient=1,
        target_effect=0.0,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_default_policy_passes_a_private_model_at_64_reference_models(seed: int) -> None:
    signals, records = _issue_pool(seed, 0)
    result = audit(signals, records, default_config(), pseudonymizer=PSEUDONYMS)
    assert result.decision.passed, result.decision.violations
    power = result.report["summary"]["power"]
    assert power["detectable_auc"] < default_config().gate.max_detectable_auc
    assert power["reference_models_needed"] <= 64


def test_default_policy_fails_a_leaky_model_on_the_patient_rules() -> None:
    signals, records = _issue_pool(2, 50)
    result = audit(signals, records, default_config(), pseudonymizer=PSEUDONYMS)
    rules = set(_rules(result.decision))
    assert {Rule.MAX_PATIENT_AUC, Rule.MAX_PATIENTS_AT_RISK} <= rules
    assert not rules & {Rule.NOISE_FLOOR, Rule.MAX_DETECTABLE_AUC}  # powered: a real fail
    # Effect 4 sigma: true AUC Phi(4 / sqrt(2)) = 0.9977 > 0.9; most leaky ones are found.
    assert 25 <= result.report["summary"]["patients_at_risk"] <= 50


# --- audit invariants ------------------------------------------------------------------------

_SMALL_CONFIG = parse_config(
    {
        "subgroups": ["site"],
        "risk": {"tail_quantile": 0.9, "min_group_size": 10, "null_replicates": 20},
        "gate": {
            "max_patient_auc": 0.97,
            "max_patients_at_risk": 0,
            "max_aggregate_auc": 0.6,
            "max_subgroup_relative_change": 1.0,
            "max_detectable_auc": 0.9999,
        },
    }
)


@functools.cache
def _small_data() -> tuple[Any, RecordTable]:
    return make_data(300, 16, seed=5, effect=2.5, n_exposed=12, records_per_patient=3)


def _permuted(order: np.ndarray) -> tuple[Any, RecordTable]:
    signals, records = _small_data()
    assert signals.target_scores is not None and signals.target_members is not None
    permuted_signals = make_signals(
        signals.scores[:, order],
        signals.masks[:, order],
        target_scores=signals.target_scores[order],
        target_members=signals.target_members[order],
    )
    permuted_records = records_from_columns(
        [records.record_ids[i] for i in order],
        [records.patient_ids[i] for i in order],
        {name: [column[i] for i in order] for name, column in records.columns.items()},
    )
    return permuted_signals, permuted_records


@functools.cache
def _small_audit() -> AuditResult:
    signals, records = _small_data()
    return audit(signals, records, _SMALL_CONFIG, pseudonymizer=PSEUDONYMS)


def _assert_close(a: Any, b: Any, path: str = "") -> None:
    """Nested equality with a last-bits tolerance on floats."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert isinstance(b, (int, float)), path
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_audit_is_invariant_to_record_order(seed: int) -> None:
    base = _small_audit()
    order = np.random.default_rng(seed).permutation(300)
    signals, records = _permuted(order)
    other = audit(signals, records, _SMALL_CONFIG, pseudonymizer=PSEUDONYMS)
    a, b = base.report["summary"], other.report["summary"]
    for key in (
        "patient_auc",
        "patient_auc_mean",
        "record_auc",
        "tail_counts",
        "patients_at_risk",
        "patients_at_risk_raw",
        "fraction_at_risk",
        "at_risk_p_values",
        "power",
        "tail",
        "histogram",
        "survival",
    ):
        _assert_close(a[key], b[key], key)
    top = lambda s: sorted((p["patient_key"], round(p["auc_max"], 9)) for p in s["top_patients"])  # noqa: E731
    assert top(b) == top(a)
    _assert_close(base.report["subgroups"], other.report["subgroups"], "subgroups")
    attacks_a = base.report["aggregate"]["attacks"]
    attacks_b = other.report["aggregate"]["attacks"]
    for name in attacks_a:
        _assert_close(attacks_a[name]["auc"], attacks_b[name]["auc"], name)
        _assert_close(attacks_a[name]["tpr_at_fpr"], attacks_b[name]["tpr_at_fpr"], name)
    assert other.decision.status is base.decision.status
    assert _rules(other.decision) == _rules(base.decision)
    # Per-record figures follow the records.
    np.testing.assert_allclose(other.records.auc, base.records.auc[order], rtol=1e-9)
    assert other.record_keys == tuple(base.record_keys[i] for i in order)


def test_noise_floor_is_invariant_to_record_order() -> None:
    """The permutation null is seeded, so a reordered but otherwise identical audit must
    give the same null figures (and hence the same gate)."""
    signals, records = _small_data()
    base = audit(signals, records, _SMALL_CONFIG, pseudonymizer=PSEUDONYMS)
    order = np.arange(300)[::-1].copy()
    other = audit(*_permuted(order), _SMALL_CONFIG, pseudonymizer=PSEUDONYMS)

    _assert_close(
        base.report["summary"]["noise_floor"], other.report["summary"]["noise_floor"], "floor"
    )


def test_decision_does_not_depend_on_record_order_at_the_noise_floor() -> None:
    """A policy limit between the floors of two orderings of the same data must not give
    two decisions (it does whenever the floor itself depends on the record order)."""
    signals, records = _small_data()
    config = parse_config({"gate": {"max_patient_auc": 0.99}, "risk": {"null_replicates": 20}})
    results = [
        audit(s, r, config, pseudonymizer=PSEUDONYMS)
        for s, r in ((signals, records), _permuted(np.arange(300)[::-1].copy()))
    ]
    floors = [r.report["summary"]["noise_floor"]["max_patient_auc_q95"] for r in results]
    policy = replace(config, gate=GateConfig(max_patient_auc=max(0.5, sum(floors) / 2)))
    floor_rule = [Rule.NOISE_FLOOR in _rules(evaluate_gate(r.report, policy)) for r in results]
    assert floor_rule[0] == floor_rule[1], f"noise floors {floors}"


def test_audit_does_not_mutate_its_inputs() -> None:
    signals, records = make_data(200, 16, seed=3, effect=2.0, n_exposed=10)
    scores = np.array(signals.scores)  # writable copies owned by the test
    masks = np.array(signals.masks)
    target_scores = np.array(signals.target_scores)
    target_members = np.array(signals.target_members)
    fresh = make_signals(scores, masks, target_scores=target_scores, target_members=target_members)
    saved = [a.copy() for a in (scores, masks, target_scores, target_members)]
    records_before = copy.deepcopy(records)
    config = _SMALL_CONFIG
    config_before = copy.deepcopy(config)
    result = audit(fresh, records, config, pseudonymizer=PSEUDONYMS)
    for before, after in zip(saved, (scores, masks, target_scores, target_members), strict=True):
        np.testing.assert_array_equal(after, before)
    assert records == records_before
    assert config == config_before
    # The report is plain data: re-evaluating it does not change it.
    report_before = copy.deepcopy(result.report)
    evaluate_gate(result.report, config)
    assert result.report == report_before


def test_audit_default_policy_report_sections() -> None:
    signals, records = make_data(120, 8, seed=2)
    result = audit(signals, records, pseudonymizer=PSEUDONYMS)
    report = result.report
    assert set(report) == {
        "schema_version",
        "audit",
        "summary",
        "aggregate",
        "subgroups",
        "decision",
    }
    assert report["audit"]["policy_sha256"] == default_config().sha256()
    assert report["audit"]["pseudonyms"] == "hmac-sha256"
    assert report["decision"]["status"] == "fail"
    assert math.isclose(report["summary"]["at_risk_auc"], 0.9)


# --- subgroups by patient under the null -----------------------------------------------------

_NULL_SUBGROUP_CONFIG = parse_config(
    {
        "subgroups": ["site"],
        "risk": {"tail_quantile": 0.9, "min_group_size": 5, "null_replicates": 20},
        "gate": {"max_subgroup_relative_change": 1.0, "subgroup_alpha": 0.05},
    }
)


def _correlated_null_audit(seed: int, k: int = 16) -> AuditResult:
    """No leakage; 150 one-record and 30 twenty-record patients whose records share the
    patient's mask and a common score component; one twenty-record patient is alone in
    site "solo"."""
    rng = np.random.default_rng(seed)
    sizes = np.r_[np.full(150, 1), np.full(30, 20)]
    rng.shuffle(sizes)
    n_patients = len(sizes)
    patient = np.repeat(np.arange(n_patients), sizes)
    masks = (np.argsort(rng.random((k, n_patients)), axis=0) < k // 2)[:, patient]
    shared = rng.standard_normal((k, n_patients))[:, patient]
    scores = 0.8 * shared + 0.6 * rng.standard_normal((k, len(patient)))
    site = rng.choice(["a", "b", "c"], n_patients, p=[0.5, 0.3, 0.2]).astype(object)
    site[int(np.flatnonzero(sizes == 20)[0])] = "solo"
    records = records_from_columns(
        [f"r{i}" for i in range(len(patient))],
        [f"p{p}" for p in patient],
        {"site": [str(site[p]) for p in patient]},
    )
    return audit(
        make_signals(scores, masks), records, _NULL_SUBGROUP_CONFIG, pseudonymizer=PSEUDONYMS
    )


def test_null_subgroup_violations_stay_within_alpha_with_correlated_records() -> None:
    """Counting records made a 20-record patient 20 observations: ~15% false subgroup
    violations. By patient, the rule keeps its family-wise level (Bonferroni: at most 5%)."""
    n_audits = 300
    false_alarms = 0
    for seed in range(n_audits):
        result = _correlated_null_audit(seed)
        column = result.report["subgroups"]["site"]
        solo = column["groups"]["solo"]
        assert solo["status"] == "too_small" and solo["max_patient_auc"] is None
        assert column["tested_patients"] == 179
        false_alarms += Rule.MAX_SUBGROUP_RELATIVE_CHANGE in _rules(result.decision)
    assert false_alarms / n_audits <= 0.05


def test_fully_leaking_records_tied_at_auc_1_in_one_group_fail_the_subgroup_rule() -> None:
    """The issue's case: more than 1% of patients clipped at AUC 1 - 1e-10, all in a group
    of 5% of the pool. A strict "above the 99th percentile" tail would be empty and pass;
    the patient tail keeps the ties, so the rule sees them and fails."""
    rng = np.random.default_rng(21)
    n, k, n_leaky = 3000, 32, 60
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    scores = rng.standard_normal((k, n))
    scores[:, :n_leaky] = np.where(masks[:, :n_leaky], 50.0, -50.0)  # exactly separated
    site = ["rare" if i < 150 else "common" for i in range(n)]
    records = records_from_columns(
        [f"r{i}" for i in range(n)], [f"p{i}" for i in range(n)], {"site": site}
    )
    config = parse_config({"subgroups": ["site"], "gate": {"max_subgroup_relative_change": 1.0}})
    result = audit(make_signals(scores, masks), records, config, pseudonymizer=PSEUDONYMS)
    tail = result.report["summary"]["tail"]
    assert tail["target"] == 30 and tail["patients"] == n_leaky  # every tie is in
    assert tail["threshold"] == pytest.approx(1.0, abs=1e-9)
    (violation,) = result.decision.violations
    assert violation.rule is Rule.MAX_SUBGROUP_RELATIVE_CHANGE
    assert "site='rare'" in violation.message
    rare = result.report["subgroups"]["site"]["groups"]["rare"]
    assert rare["observed"] == n_leaky and rare["expected"] == pytest.approx(n_leaky * 0.05)
