"""The list of gate rules, in the order the gate checks them (the order of a decision's
violations), and what is derived from it: the policy's rule keys, the patient-level AUC
limits, and the K an audit needs. Adding a rule is one `register_rule` call."""

from __future__ import annotations

from privacy_gate.rules.base import GateRule, Policy

__all__ = [
    "RULES",
    "lowest_patient_auc_limit",
    "models_needed",
    "patient_auc_limits",
    "policy_keys",
    "register_rule",
    "unregister_rule",
]

RULES: dict[str, GateRule] = {}
"""Every rule the gate knows, by key, in check order."""


def register_rule(rule: GateRule) -> GateRule:
    """Add a rule (its key must be new and a Python identifier: it is a YAML key and a
    metric-key part)."""
    if not rule.key.isidentifier() or rule.key in RULES:
        raise ValueError(f"A gate rule needs a new identifier as its key; got {rule.key!r}.")
    RULES[rule.key] = rule
    return rule


def unregister_rule(key: str) -> None:
    """Remove a rule (for tests that register a throwaway one)."""
    del RULES[key]


def policy_keys() -> tuple[str, ...]:
    """The rule keys a policy's ``gate`` section may set."""
    return tuple(key for key, rule in RULES.items() if rule.in_policy)


def _active(policy: Policy) -> list[GateRule]:
    return [rule for rule in RULES.values() if rule.active(policy)]


def _patient_limits(policy: Policy) -> list[tuple[float, str]]:
    """Set rules only: a derived rule (the noise floor) is active because of these."""
    return [
        found
        for key, rule in RULES.items()
        if rule.in_policy
        and policy.limit(key) is not None
        and (found := rule.patient_auc_limit(policy)) is not None
    ]


def patient_auc_limits(policy: Policy) -> tuple[float, ...]:
    """The patient-level AUC limits the noise floor must sit below."""
    return tuple(dict.fromkeys(limit for limit, _ in _patient_limits(policy)))


def lowest_patient_auc_limit(policy: Policy) -> tuple[float, str] | None:
    """The lowest patient-AUC limit the policy enforces and the key it comes from (the
    target DP-SGD is tuned to), None when no rule limits a patient's AUC."""
    found = _patient_limits(policy)
    return min(found) if found else None


def models_needed(policy: Policy, n_records: int, n_patients: int) -> int | None:
    """The K an audit of this pool needs under this policy (balanced plan): the most any
    active rule asks for. None when some rule's demand is beyond the search; 0 when no
    rule asks."""
    needs = [
        rule.reference_models_needed(policy, n_records, n_patients) for rule in _active(policy)
    ]
    return None if None in needs else max([0, *(n for n in needs if n is not None)])
