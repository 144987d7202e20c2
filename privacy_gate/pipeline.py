"""The audit pipeline: signals and records in, a report with a gate decision out.

Stages run in one direction (docs/statistics.md): record statistics -> patient aggregation ->
noise floor -> subgroups -> aggregate attack -> gate -> sinks. Only this module and the
CLI touch the file system.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from privacy_gate.at_risk import (
    audit_power,
    berger_boos_beta,
    count_pairs,
    patient_p_values,
    record_p_values,
)
from privacy_gate.attacks import run_attacks
from privacy_gate.config import (
    AuditConfig,
    VarianceEstimator,
    default_config,
    load_config,
    parse_config,
    read_config_yaml,
)
from privacy_gate.errors import ConfigError, InputError, ReportError
from privacy_gate.finish import AuditResult, Sections, SectionsOf, finish
from privacy_gate.gate import Decision, decided, reference_models_for_policy
from privacy_gate.noise_floor import NoiseFloor, compute_noise_floor
from privacy_gate.null_tail import NullTailCounter, null_tail_chance
from privacy_gate.patients import aggregate_patients, benjamini_hochberg_count
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.record_stats import compute_record_stats
from privacy_gate.records import RecordTable, load_records
from privacy_gate.report import (
    REPORT_FILE,
    file_sha256,
    load_report,
    read_audit_report,
    write_json,
    write_table,
)
from privacy_gate.report_model import AuditReport
from privacy_gate.signals import Signals, Task, load_signals
from privacy_gate.signing import sign_report, signing_key_from_environment
from privacy_gate.subgroups import (
    SubgroupColumn,
    analyse_subgroups,
    patient_level,
    record_level,
)
from privacy_gate.summary import AuditFacts, build_report
from privacy_gate.variance import auc_estimator, never_lower

__all__ = [
    "AuditResult",
    "Sections",
    "assess",
    "audit",
    "check",
    "check_report",
    "recheck",
    "score",
    "write_outputs",
]

_LOG = logging.getLogger(__name__)


def _subgroup_columns(
    config: AuditConfig,
    records: RecordTable,
    record_auc: np.ndarray[Any, np.dtype[np.float64]],
    patient_index: np.ndarray[Any, np.dtype[np.intp]],
    n_patients: int,
) -> dict[str, SubgroupColumn]:
    """Each configured column's labels: patient-level, then record-level columns."""
    columns = {
        name: patient_level(records.subgroup_column(name), patient_index, n_patients)
        for name in config.subgroups
    }
    for name in config.record_columns:
        values = records.subgroup_column(name)
        columns[name] = record_level(values, patient_index, n_patients, record_auc)
    return columns


def _check_alignment(signals: Signals, records: RecordTable, config: AuditConfig) -> None:
    if records.n_records != signals.n_records:
        raise InputError(
            f"The record table has {records.n_records} rows but the signals have "
            f"{signals.n_records} records. HINT: records.csv needs one row per "
            "signal column, in the same order."
        )
    for column in (*config.subgroups, *config.record_columns):
        records.subgroup_column(column)  # raises with the available columns


def audit(
    signals: Signals,
    records: RecordTable,
    config: AuditConfig | None = None,
    *,
    pseudonymizer: Pseudonymizer | None = None,
    inputs: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    sections_of: SectionsOf | None = None,
) -> AuditResult:
    """Run the numerical audit and the gate on in-memory signals.

    Args:
        signals: reference-model (and optional release-candidate) signals.
        records: metadata aligned with the signals.
        config: the policy; the packaged default policy when None.
        pseudonymizer: how ids appear in outputs (default: keyed from the environment).
        inputs: input file digests to record in the report.
        provenance: where the signals came from (plan, training), kept in ``audit``.
        sections_of: what the caller adds to the figures before the gate decides
            (`privacy_gate.finish.Sections`: provenance known only after the audit, the
            DP sections).
    """
    config = config or default_config()
    figures = assess(
        signals, records, config, pseudonymizer=pseudonymizer, inputs=inputs, provenance=provenance
    )
    return finish(figures, config, sections_of=sections_of)


def assess(
    signals: Signals,
    records: RecordTable,
    config: AuditConfig,
    *,
    pseudonymizer: Pseudonymizer | None = None,
    inputs: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> AuditResult:
    """The numerical stages of `audit`: the figures, in a report the gate has not decided
    (`privacy_gate.finish.finish` decides it; an adaptive audit assesses each look)."""
    pseudonymizer = pseudonymizer or Pseudonymizer.from_environment()
    _check_alignment(signals, records, config)
    risk, gate = config.risk, config.gate
    shrunk = risk.variance is VarianceEstimator.SHRUNK
    stats = compute_record_stats(
        signals.scores, signals.masks, risk.fpr, estimate=never_lower if shrunk else None
    )
    patient_index, patient_ids = records.patient_index()
    n_patients = len(patient_ids)
    patients = aggregate_patients(stats.auc, stats.auc_se, patient_index, n_patients)
    max_records = int(np.bincount(patient_index, minlength=1).max())
    beta = berger_boos_beta(gate.fdr, n_patients, max_records)
    p_values = patient_p_values(
        record_p_values(stats.moments, risk.at_risk_auc, beta), patient_index, n_patients
    )
    limits = config.patient_auc_limits()
    null_tail = NullTailCounter(n_patients, risk.tail_quantile)
    floor: NoiseFloor = compute_noise_floor(
        signals.scores,
        signals.masks,
        patient_index,
        n_patients,
        at_risk_auc=risk.at_risk_auc,
        limit=min(limits) if limits else None,
        replicates=risk.null_replicates,
        seed=risk.seed,
        choice=risk.null,
        time_budget_s=risk.null_time_budget_s,
        record_rank=records.id_rank(),
        auc_of=auc_estimator(shrunk),
        on_replicate=null_tail,
    )
    pairs = count_pairs(stats.moments.n_in, stats.moments.n_out)
    power = audit_power(
        pairs,
        n_patients,
        at_risk_auc=risk.at_risk_auc,
        fdr=gate.fdr,
        power=gate.detection_power,
        max_records=max_records,
        beta=beta,
    )
    subgroups = analyse_subgroups(
        patients.auc_max,
        _subgroup_columns(config, records, stats.auc, patient_index, n_patients),
        tail_quantile=risk.tail_quantile,
        min_group_size=risk.min_group_size,
        null_share=null_tail_chance(
            floor, null_tail, signals.masks, patient_index, n_patients, risk.tail_quantile
        ),
        alpha=gate.subgroup_alpha,
    )
    aggregate = None
    if signals.target_scores is not None and signals.target_members is not None:
        aggregate = run_attacks(
            np.asarray(signals.target_scores, dtype=np.float64),
            signals.target_members,
            stats.moments,
            signals.scores,
            signals.masks,
            fprs=risk.fpr,
            single_label=signals.task is not Task.MULTILABEL,
            gamma=risk.rmia_gamma,
            offline_a=risk.rmia_offline_a,
        )
    record_keys = tuple(pseudonymizer.record(r) for r in records.record_ids)
    patient_keys = tuple(pseudonymizer.key_of(kind, ident) for kind, ident in patient_ids)
    facts = AuditFacts(
        reference_models=signals.n_reference_models,
        records=signals.n_records,
        patients=n_patients,
        task=signals.task,
        pseudonyms=pseudonymizer.scheme,
        pseudonym_key_id=pseudonymizer.key_id,
        inputs=dict(inputs or {}),
        provenance=dict(provenance or {}),
    )
    report = build_report(
        facts,
        config,
        records=stats,
        patients=patients,
        patient_keys=patient_keys,
        p_values=p_values,
        patients_at_risk=benjamini_hochberg_count(p_values, gate.fdr),
        floor=floor,
        power=power,
        count_pairs=pairs,
        reference_models_needed=reference_models_for_policy(config, signals.n_records, n_patients),
        subgroups=subgroups,
        aggregate=aggregate,
    )
    return AuditResult(report, stats, patients, record_keys, patient_keys, patient_index)


def signed_if_key(report: dict[str, Any]) -> dict[str, Any]:
    """The report as written to disk: signed when the environment holds the signing key
    (``PRIVACY_GATE_SIGNING_KEY``), so ``privacy-gate keys verify report.json`` answers
    for the file as for its MLflow copy; unchanged without one."""
    key = signing_key_from_environment()
    if key is None:
        return report
    return sign_report(report, key, run_id=None, model_sha256=None, record_nulls=False)


def write_outputs(
    result: AuditResult, out_dir: str | Path, *, plots: bool = True
) -> dict[str, Path]:
    """Write report.json, records.csv, patients.csv and (with plots) report.md/.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats, patients = result.records, result.patients
    fprs = [repr(float(f)) for f in stats.fpr]
    write_table(
        out / "records.csv",
        ["record_id", "patient_key", "auc", "auc_se", *[f"tpr_at_fpr_{f}" for f in fprs], "mu"],
        [
            result.record_keys,
            [result.patient_keys[p] for p in result.patient_index],
            stats.auc,
            stats.auc_se,
            *list(stats.tpr),
            stats.mu,
        ],
    )
    write_table(
        out / "patients.csv",
        ["patient_key", "n_records", "auc_max", "auc_mean"],
        [result.patient_keys, patients.n_records, patients.auc_max, patients.auc_mean],
    )
    write_json(signed_if_key(result.report.to_dict()), out / REPORT_FILE)
    written = {
        "report.json": out / REPORT_FILE,
        "records.csv": out / "records.csv",
        "patients.csv": out / "patients.csv",
    }
    if plots:
        from privacy_gate.render import render_html, render_markdown, render_plots

        images = render_plots(result.report, out)
        (out / "report.md").write_text(
            render_markdown(result.report, {k: p.name for k, p in images.items()}), "utf-8"
        )
        (out / "report.html").write_text(render_html(result.report, images), "utf-8")
        written.update({"report.md": out / "report.md", "report.html": out / "report.html"})
        written.update(images)
    return written


def score(
    signals_path: str | Path,
    records_path: str | Path,
    out_dir: str | Path,
    *,
    config_path: str | Path | None = None,
    raw_ids: bool = False,
    plots: bool = True,
) -> AuditResult:
    """`privacy-gate score`: audit signal files and write every output into ``out_dir``."""
    config = default_config() if config_path is None else load_config(config_path)
    signals = load_signals(signals_path)
    records = load_records(records_path)
    inputs = {
        "signals_sha256": file_sha256(signals_path),
        "records_sha256": file_sha256(records_path),
    }
    result = audit(
        signals,
        records,
        config,
        pseudonymizer=Pseudonymizer.from_environment(raw=raw_ids),
        inputs=inputs,
    )
    write_outputs(result, out_dir, plots=plots)
    return result


def policy_for_check(report: AuditReport, config_path: str | Path | None) -> AuditConfig:
    """The policy `check` applies: the audit's own policy, or the given config's gate rules
    over the audit's risk definitions (an organisation's policy in CI).

    A config that changes the ``risk`` section or the subgroup columns needs a new audit.
    """
    audited = parse_config(report.audit.config, source="report's audit config")
    if config_path is None:
        return audited
    raw = read_config_yaml(config_path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"The config {str(config_path)!r} must be a YAML mapping.")
    merged = dict(raw)
    merged.setdefault("risk", report.audit.config["risk"])
    merged.setdefault("subgroups", list(audited.subgroups))
    merged.setdefault("record_columns", list(audited.record_columns))
    given = parse_config(merged, source=f"config {Path(config_path).name}")
    if given.risk != audited.risk:
        raise ReportError(
            "The config changes the 'risk' section the audit was run with, so "
            "the report's figures do not answer it. HINT: run a new audit "
            "('privacy-gate score') with this config; 'check' re-evaluates only "
            "gate.* rules."
        )
    for key in ("subgroups", "record_columns"):
        if set(getattr(given, key)) != set(getattr(audited, key)):
            raise ReportError(
                f"The config's {key} {list(getattr(given, key))} differ from the "
                f"audited ones {list(getattr(audited, key))}. HINT: run a new audit."
            )
    return replace(audited, gate=given.gate)


def check(report_path: str | Path, config_path: str | Path | None = None) -> Decision:
    """`privacy-gate check`: re-evaluate the gate on an existing report."""
    return check_report(
        load_report(report_path), config_path, source=f"The report {str(report_path)!r}"
    )


def recheck(report: AuditReport, config_path: str | Path | None = None) -> AuditReport:
    """A stored report decided again, under its own policy or the given config's gate
    rules (`policy_for_check`): what ``check`` prints, its GitHub summary and its
    pages show."""
    return decided(report, policy_for_check(report, config_path))


def check_report(
    report: Mapping[str, Any] | AuditReport,
    config_path: str | Path | None = None,
    *,
    source: str = "The report",
) -> Decision:
    """Re-evaluate the gate on a report already in memory (e.g. fetched from MLflow)."""
    if not isinstance(report, AuditReport):
        report = read_audit_report(report, source=source)
    return recheck(report, config_path).decision
