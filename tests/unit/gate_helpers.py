"""Shared by the gate tests and the pipeline-report tests: BH written out, the
rule list of a decision, and the monotonicity property with its policy strategy."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from privacy_gate.config import AuditConfig, GateConfig, RiskConfig
from privacy_gate.gate import Decision, evaluate_gate
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.report_model import AuditReport

PSEUDONYMS = Pseudonymizer(key=b"test-key")
FPR_KEYS = ("0.001", "0.01")
AGGREGATE_RULES = {"max_aggregate_auc", "max_aggregate_tpr_at_fpr"}
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


SETTINGS = ("fdr", "subgroup_alpha", "detection_power")


def gate_of(**values: Any) -> GateConfig:
    """A gate policy from rule limits and settings given as keywords (None: unset)."""
    settings = {k: values.pop(k) for k in SETTINGS if k in values}
    return GateConfig(limits=values, **settings)


def with_limits(config: AuditConfig, **limits: Any) -> AuditConfig:
    """The config with these rule limits set (None: dropped)."""
    merged = {**config.gate.limits, **limits}
    return dataclasses.replace(config, gate=dataclasses.replace(config.gate, limits=merged))


def rules_of(decision: Decision) -> list[str]:
    return [v.rule for v in decision.violations]


def independent_bh(p_values: np.ndarray, q: float, m: int) -> int:
    """Benjamini-Hochberg step-up count, written out independently."""
    ordered = sorted(float(p) for p in p_values)
    count = 0
    for rank, p in enumerate(ordered, start=1):
        if p <= q * rank / m:
            count = rank
    return count


@st.composite
def tight_and_loose(draw: st.DrawFn) -> tuple[GateConfig, GateConfig]:
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
        return gate_of(
            **{
                **kwargs,
                "max_aggregate_tpr_at_fpr": None if tpr is None else tuple(sorted(tpr.items())),
            }
        )

    return build(tight), build(loose)


def assert_monotone(
    report: AuditReport, risk: RiskConfig, tight: GateConfig, loose: GateConfig
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
        return {"aggregate" if r in AGGREGATE_RULES else r for r in rules_of(decision)}

    assert kinds(lenient) <= kinds(strict)


# --- hand-built reports ------------------------------------------------------------------
def _neutral(kind: Any) -> Any:
    """A placeholder for a field a hand-built report leaves out (the gate ignores it)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind):
        return None
    if origin is tuple or origin in (dict, Mapping) or kind is dict:
        return [] if origin is tuple else {}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return filled(kind, {})
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next(iter(kind)).value
    return {bool: False, int: 0, float: 0.0, str: ""}.get(kind)


def filled(cls: Any, partial: Mapping[str, Any]) -> dict[str, Any]:
    """``partial`` with every field of ``cls`` it lacks set to a neutral placeholder, at
    every depth (sections, attacks, subgroup columns and groups)."""
    hints = typing.get_type_hints(cls)
    out = dict(partial)
    for field in dataclasses.fields(cls):
        if field.name == "extra" or field.metadata.get("transient"):
            continue
        kind = hints[field.name]
        arms = [a for a in typing.get_args(kind) if a is not type(None)]
        inner = arms[0] if typing.get_origin(kind) in (typing.Union, types.UnionType) else kind
        if field.name not in out:
            out[field.name] = _neutral(kind)
        elif isinstance(inner, type) and dataclasses.is_dataclass(inner):
            if out[field.name] is not None:
                out[field.name] = filled(inner, out[field.name])
        elif typing.get_origin(inner) in (dict, Mapping) and isinstance(out[field.name], Mapping):
            item = typing.get_args(inner)[1]
            if isinstance(item, type) and dataclasses.is_dataclass(item):
                out[field.name] = {k: filled(item, v) for k, v in out[field.name].items()}
    return out


def typed_report(partial: Mapping[str, Any]) -> AuditReport:
    """A hand-built report (only the figures a test sets) as the typed report."""
    return AuditReport.from_dict(filled(AuditReport, {"decision": {"status": "pass"}, **partial}))


def decide(partial: Mapping[str, Any], config: AuditConfig) -> Decision:
    """`evaluate_gate` on a hand-built report."""
    return evaluate_gate(typed_report(partial), config)
