"""The gate's rules, one object each (`GateRule`), listed in one registry (`RULES`).

A new rule is a `GateRule` subclass and one `register_rule` call: the policy parser, the
gate, the adaptive audit's settling and the power planning read the registry and name no
rule. The built-in rules, in check order: the power rules (``min_reference_models``, the
derived ``noise_floor``, ``max_detectable_auc``), the patient-level rules
(``max_patient_auc``, ``max_patients_at_risk``, ``max_fraction_at_risk``), the aggregate
rules (``max_aggregate_auc``, ``max_aggregate_tpr_at_fpr``) and
``max_subgroup_relative_change``.
"""

from __future__ import annotations

from privacy_gate.rules.aggregate import MaxAggregateAuc, MaxAggregateTprAtFpr
from privacy_gate.rules.base import GateRule, ParseContext, Policy
from privacy_gate.rules.patients import (
    MaxFractionAtRisk,
    MaxPatientAuc,
    MaxPatientsAtRisk,
    confident_count,
)
from privacy_gate.rules.power import POWER_HINT, MaxDetectableAuc, MinReferenceModels, NoiseFloor
from privacy_gate.rules.registry import (
    RULES,
    lowest_patient_auc_limit,
    models_needed,
    patient_auc_limits,
    policy_keys,
    register_rule,
    unregister_rule,
)
from privacy_gate.rules.subgroup import MaxSubgroupRelativeChange

__all__ = [
    "POWER_HINT",
    "RULES",
    "GateRule",
    "ParseContext",
    "Policy",
    "confident_count",
    "lowest_patient_auc_limit",
    "models_needed",
    "patient_auc_limits",
    "policy_keys",
    "register_rule",
    "unregister_rule",
]

for _rule in (
    MinReferenceModels(),
    NoiseFloor(),
    MaxDetectableAuc(),
    MaxPatientAuc(),
    MaxPatientsAtRisk(),
    MaxFractionAtRisk(),
    MaxAggregateAuc(),
    MaxAggregateTprAtFpr(),
    MaxSubgroupRelativeChange(),
):
    register_rule(_rule)
