"""The summary stage: the stages' results in, the typed report (before the gate) out.

This is the one place that decides what a report holds; `pipeline.audit` runs the stages
and hands their results here, then lets the gate decide on what this built.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from privacy_gate._version import __version__
from privacy_gate.at_risk import AT_RISK_TEST, AuditPower
from privacy_gate.attacks import AggregateResult
from privacy_gate.config import AuditConfig
from privacy_gate.noise_floor import NoiseFloor
from privacy_gate.patients import (
    PatientStats,
    distribution_summary,
    histogram,
    survival_curve,
    tail_counts,
)
from privacy_gate.record_stats import RecordStats
from privacy_gate.report import SCHEMA_VERSION
from privacy_gate.report_model import (
    UNDECIDED,
    Aggregate,
    AttackFigures,
    AuditInfo,
    AuditReport,
    Distribution,
    Histogram,
    Power,
    Roc,
    Summary,
    Survival,
    Tail,
    TopPatient,
)
from privacy_gate.signals import Task
from privacy_gate.subgroups import SubgroupResult

__all__ = ["AuditFacts", "build_report"]

MAX_STORED_P_VALUE = 0.5
"""gate.fdr is at most 0.5, so larger patient p-values never matter to a re-check."""
TOP_PATIENTS = 20
SURVIVAL_GRID = np.linspace(0.5, 1.0, 101)


@dataclass(frozen=True)
class AuditFacts:
    """What was audited, for the report's ``audit`` section."""

    reference_models: int
    records: int
    patients: int
    task: Task
    pseudonyms: str
    inputs: Mapping[str, str]
    pseudonym_key_id: str | None
    provenance: Mapping[str, Any]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _distribution(values: np.ndarray[Any, Any]) -> Distribution:
    figures = {k: _finite(v) for k, v in distribution_summary(values).items()}
    return Distribution(**figures)


def _aggregate(result: AggregateResult | None) -> Aggregate | None:
    if result is None:
        return None
    return Aggregate(
        members=result.members,
        non_members=result.non_members,
        strongest=result.strongest,
        rmia_offline_a=result.parameters.get("rmia_offline_a"),
        rmia_offline_a_source=result.parameters.get("rmia_offline_a_source"),
        attacks={
            attack: AttackFigures(
                auc=_finite(r.auc),
                tpr_at_fpr={repr(f): _finite(t) for f, t in r.tpr_at_fpr.items()},
                roc=Roc(tuple(r.roc_fpr.tolist()), tuple(r.roc_tpr.tolist())),
            )
            for attack, r in result.attacks.items()
        },
    )


def _top_patients(patients: PatientStats, keys: Sequence[str]) -> tuple[TopPatient, ...]:
    top = np.argsort(-patients.auc_max, kind="stable")[:TOP_PATIENTS]
    return tuple(
        TopPatient(
            patient_key=keys[p],
            n_records=int(patients.n_records[p]),
            auc_max=_finite(patients.auc_max[p]),
            auc_mean=_finite(patients.auc_mean[p]),
            auc_se=_finite(patients.auc_se[p]),
        )
        for p in top
    )


def _at_risk_keys(
    p_values: np.ndarray[Any, Any], count: int, keys: Sequence[str]
) -> tuple[str, ...]:
    """The keys of the ``count`` patients Benjamini-Hochberg declares at risk: its step-up
    rejects the ``count`` smallest p-values (ties at the boundary are all below the line,
    so the count holds them all), most significant first."""
    order = np.argsort(p_values, kind="stable")[:count]
    return tuple(keys[p] for p in order)


def build_report(
    facts: AuditFacts,
    config: AuditConfig,
    *,
    records: RecordStats,
    patients: PatientStats,
    patient_keys: Sequence[str],
    p_values: np.ndarray[Any, Any],
    patients_at_risk: int,
    floor: NoiseFloor,
    power: AuditPower,
    count_pairs: list[list[int]],
    reference_models_needed: int | None,
    subgroups: SubgroupResult,
    aggregate: AggregateResult | None,
) -> AuditReport:
    """The report of one audit, undecided (`AuditReport.with_decision` adds the gate's)."""
    at_risk_auc = config.risk.at_risk_auc
    curve = survival_curve(patients.auc_max, SURVIVAL_GRID)
    bins = histogram(patients.auc_max)
    summary = Summary(
        patient_auc=_distribution(patients.auc_max),
        patient_auc_mean=_distribution(patients.auc_mean),
        record_auc=_distribution(records.auc),
        tail_counts=tail_counts(patients.auc_max),
        at_risk_auc=at_risk_auc,
        fdr=config.gate.fdr,
        patients_at_risk=patients_at_risk,
        patients_at_risk_raw=int(np.count_nonzero(patients.auc_max > at_risk_auc)),
        fraction_at_risk=patients_at_risk / facts.patients,
        at_risk_test=AT_RISK_TEST,
        at_risk_p_values=tuple(np.sort(p_values[p_values <= MAX_STORED_P_VALUE]).tolist()),
        tail=Tail(
            quantile=subgroups.tail_quantile,
            target=subgroups.tail_target,
            patients=subgroups.tail_patients,
            threshold=subgroups.tail_threshold,
        ),
        noise_floor=floor,
        power=Power(
            alpha=power.alpha,
            beta=power.beta,
            power=power.power,
            detectable_auc=power.detectable_auc,
            n_in=power.n_in,
            n_out=power.n_out,
            max_records=power.max_records if power.detectable_auc_max_records else None,
            detectable_auc_max_records=power.detectable_auc_max_records,
            count_pairs=tuple(tuple(int(c) for c in pair) for pair in count_pairs),
            reference_models_needed=reference_models_needed,
        ),
        histogram=Histogram(tuple(bins["edges"]), tuple(bins["counts"])),
        survival=Survival(**{k: tuple(v) for k, v in curve.items()}),
        top_patients=_top_patients(patients, patient_keys),
        at_risk_patients=_at_risk_keys(p_values, patients_at_risk, patient_keys),
    )
    audit = AuditInfo(
        package_version=__version__,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        reference_models=facts.reference_models,
        records=facts.records,
        patients=facts.patients,
        inputs=dict(facts.inputs),
        config=config.to_dict(),
        policy_sha256=config.sha256(),
        pseudonyms=facts.pseudonyms,
        pseudonym_key_id=facts.pseudonym_key_id,
        target=aggregate is not None,
        task=facts.task,
    )
    if facts.provenance:
        audit = audit.with_provenance(facts.provenance)
    return AuditReport(
        schema_version=SCHEMA_VERSION,
        audit=audit,
        summary=summary,
        aggregate=_aggregate(aggregate),
        subgroups=dict(subgroups.columns),
        decision=UNDECIDED,
    )
