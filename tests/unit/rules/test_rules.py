"""The rule registry: every rule keeps its contract, and a rule added in one place (here, in
the test) is parsed, checked, settled and reported without touching the gate."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml
from gate_helpers import PSEUDONYMS, typed_report
from test_pipeline_gate import make_data

from privacy_gate.adaptive import AdaptivePlan, settle
from privacy_gate.config import default_config, parse_config
from privacy_gate.errors import ConfigError, integer_at_least
from privacy_gate.gate import evaluate_gate
from privacy_gate.pipeline import audit
from privacy_gate.report_model import AuditReport, Violation
from privacy_gate.rules import (
    RULES,
    GateRule,
    ParseContext,
    Policy,
    lowest_patient_auc_limit,
    policy_keys,
    register_rule,
    unregister_rule,
)

POLICY_RULES = [rule for rule in RULES.values() if rule.in_policy]
CONTEXT = ParseContext(at_risk_auc=0.9, fpr=(0.001, 0.01))
DEFAULT_POLICY_SHA256 = "edc63f7835fe9e205cee97de1d904324535fe94e68e41d3c347569345a44799d"
"""The packaged default policy's digest since schema 2.0: a registry that requires a policy
by digest keeps accepting audits under it only while this holds."""


def _key(rule: GateRule) -> str:
    return rule.key


@pytest.mark.parametrize("rule", POLICY_RULES, ids=_key)
def test_every_rule_parses_its_example_and_round_trips(rule: GateRule) -> None:
    limit = rule.parse(rule.example, CONTEXT)
    assert rule.parse(rule.to_json(limit), CONTEXT) == limit
    config = parse_config({"gate": {rule.key: rule.example}})
    assert config.gate.active_rules() == (rule.key,)
    assert parse_config(config.to_dict()) == config
    assert parse_config(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


@pytest.mark.parametrize("rule", POLICY_RULES, ids=_key)
@pytest.mark.parametrize("bad", ["high", True, -1, float("nan")])
def test_every_rule_refuses_a_bad_limit_by_name(rule: GateRule, bad: Any) -> None:
    with pytest.raises(ConfigError, match=rule.key) as raised:
        parse_config({"gate": {rule.key: bad}})
    assert repr(bad) in str(raised.value) or str(bad) in str(raised.value)


@pytest.mark.parametrize("rule", list(RULES.values()), ids=_key)
def test_every_rule_settles_or_says_why_not(rule: GateRule) -> None:
    """A rule that cannot settle an adaptive fail states why (the docs list it); one that
    can answers on a report that lacks its evidence with False, never an error."""
    report = typed_report({"audit": {"reference_models": 16, "records": 10, "patients": 10}})
    policy = parse_config({"gate": {"max_patient_auc": 0.95, "max_patients_at_risk": 0}})
    assert rule.settles != bool(rule.cannot_settle_because)
    context = policy.policy()
    limits = (
        {**context.limits, rule.key: rule.parse(rule.example, CONTEXT)}
        if rule.in_policy
        else context.limits
    )
    settled = rule.settled(report, _with(context, limits), 4, 0.05)
    assert settled is False


def _with(policy: Policy, limits: Mapping[str, Any]) -> Policy:
    return Policy(
        limits=limits,
        at_risk_auc=policy.at_risk_auc,
        min_group_size=policy.min_group_size,
        fdr=policy.fdr,
        detection_power=policy.detection_power,
        subgroup_alpha=policy.subgroup_alpha,
    )


def test_the_default_policy_digest_holds() -> None:
    assert default_config().sha256() == DEFAULT_POLICY_SHA256


def test_the_lowest_patient_auc_limit_and_its_source() -> None:
    both = parse_config(
        yaml.safe_load(
            "risk: {at_risk_auc: 0.8}\ngate: {max_patient_auc: 0.95, max_patients_at_risk: 0}"
        )
    )
    assert lowest_patient_auc_limit(both.policy()) == (0.8, "risk.at_risk_auc")
    assert both.patient_auc_limits() == (0.95, 0.8)
    worst_only = parse_config({"gate": {"max_patient_auc": 0.92}})
    assert lowest_patient_auc_limit(worst_only.policy()) == (0.92, "gate.max_patient_auc")
    aggregate_only = parse_config({"gate": {"max_aggregate_auc": 0.6}})
    assert lowest_patient_auc_limit(aggregate_only.policy()) is None
    assert aggregate_only.patient_auc_limits() == ()


# --- a rule added in one place -------------------------------------------------------------


class MinPatients(GateRule):
    """An audit of fewer patients than the limit fails: its figures say little."""

    key = "min_patients"
    example = 50
    settles = True  # the cohort does not grow with more reference models

    def parse(self, value: Any, context: ParseContext) -> int:
        return integer_at_least("gate", self.key, value, lo=1)

    def check(self, report: AuditReport, policy: Policy) -> list[Violation]:
        limit, n = policy.limit(self.key), report.audit.patients
        if n >= limit:
            return []
        return [Violation(self.key, n, limit, f"{n} patients, fewer than {limit}.")]

    def settled(self, report: AuditReport, policy: Policy, looks: int, alpha: float) -> bool:
        return bool(report.audit.patients < policy.limit(self.key))


@pytest.fixture
def min_patients() -> Iterator[GateRule]:
    rule = register_rule(MinPatients())
    try:
        yield rule
    finally:
        unregister_rule(rule.key)


@functools.cache
def _small_pool() -> tuple[Any, Any]:
    return make_data(300, 16, seed=5, effect=2.5, n_exposed=12, records_per_patient=3)


def test_an_unregistered_rule_is_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="min_patients"):
        parse_config({"gate": {"min_patients": 500}})


def test_a_rule_registered_in_one_place_runs_in_an_audit(min_patients: GateRule) -> None:
    policy = {"gate": {"min_patients": 500, "max_patient_auc": 0.999999}}
    config = parse_config(policy)
    assert policy_keys()[-1] == "min_patients" and "min_patients" in config.gate.active_rules()
    assert config.to_dict()["gate"]["min_patients"] == 500
    assert default_config().sha256() == DEFAULT_POLICY_SHA256  # unset: not in the digest

    result = audit(*_small_pool(), config, pseudonymizer=PSEUDONYMS)
    violation = next(v for v in result.report.decision.violations if v.rule == "min_patients")
    assert (violation.value, violation.limit) == (100, 500)  # 300 records, 3 per patient
    stored = AuditReport.from_dict(result.report.to_dict())
    assert "min_patients" in {v.rule for v in stored.decision.violations}
    assert "min_patients" in evaluate_gate(stored, config).one_line()

    look = settle(result.report, config, AdaptivePlan(round_size=16, max_reference_models=64))
    assert "min_patients" in look.settled
    assert look.outcome.value == "fail_settled"

    enough = parse_config({"gate": {"min_patients": 100, "max_patient_auc": 0.999999}})
    assert "min_patients" not in {v.rule for v in evaluate_gate(stored, enough).violations}


def test_a_rule_key_must_be_new_and_an_identifier(min_patients: GateRule) -> None:
    with pytest.raises(ValueError, match="min_patients"):
        register_rule(MinPatients())
    bad = MinPatients()
    bad.key = "min patients"
    with pytest.raises(ValueError, match="min patients"):
        register_rule(bad)
