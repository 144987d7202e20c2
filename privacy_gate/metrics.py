"""The report's figures as metric keys: one source for every sink that logs metrics
(the MLflow run, the Lightning Trainer's loggers), so a figure has one name everywhere.

Keys are ``privacy_gate/<segment>/...`` (`privacy_gate.metric_keys`); ``<column>`` and
``<value>`` of subgroups are escaped:

- ``patient_auc/<stat>``, ``patient_auc_mean/<stat>``, ``record_auc/<stat>`` (max, mean,
  median, q90, q99), ``patients_at_risk``, ``patients_at_risk_raw``,
  ``fraction_at_risk``, ``tail_count/<auc>``;
- ``noise_floor/max_patient_auc_q95``, ``noise_floor/expected_at_risk``,
  ``noise_floor/reference_models_needed``;
- ``power/detectable_auc``, ``power/reference_models_needed``;
- ``subgroup_tail/patients``, ``subgroup_tail/threshold``;
- ``aggregate/auc`` (the strongest attack), ``aggregate/tpr_at_fpr/<fpr>`` (the highest
  over the attacks, as the gate reads it), ``attack/<name>/auc``,
  ``attack/<name>/tpr_at_fpr/<fpr>``;
- ``dp/<figure>`` (the audited recipe's guarantee), ``dp_recommendation/<figure>``;
- ``adaptive/looks``, ``adaptive/reference_models_saved``, ``adaptive/settled`` (1.0 when
  a look settled the verdict) for ``reference_models: auto``;
- ``subgroup/<column>/<value>/<statistic>`` for tested groups and
  ``subgroup_column/<column>/<statistic>``;
- against a champion (`comparison_metrics`): ``vs_champion/worst_patient_auc_change``,
  ``vs_champion/patients_at_risk_change``, ``vs_champion/aggregate_auc_change``,
  ``vs_champion/newly_at_risk``, ``vs_champion/no_longer_at_risk``.

Figures that are None (not finite in the audit) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from privacy_gate.comparison import AuditComparison
from privacy_gate.metric_keys import escape_segment, join_key
from privacy_gate.report_model import AdaptiveStop, AuditReport
from privacy_gate.subgroups import GroupStatus

__all__ = ["PASSED", "TRAINER_METRICS", "comparison_metrics", "report_metrics", "trainer_metrics"]

PASSED = join_key("passed")
"""1.0 when the gate passed, else 0.0 (the Trainer's metric for early stopping or alerts)."""
TRAINER_METRICS = (
    join_key("patient_auc", "max"),
    join_key("patients_at_risk"),
    join_key("noise_floor", "max_patient_auc_q95"),
    join_key("power", "detectable_auc"),
    join_key("aggregate", "auc"),
)
"""The headline figures a Lightning Trainer logs (the same keys as in MLflow)."""

_DISTRIBUTIONS = ("patient_auc", "patient_auc_mean", "record_auc")
_DISTRIBUTION_STATISTICS = ("max", "mean", "median", "q90", "q99")
_SCALARS = ("patients_at_risk", "patients_at_risk_raw", "fraction_at_risk")
_NOISE_FLOOR = ("max_patient_auc_q95", "expected_at_risk", "reference_models_needed")
_POWER = ("detectable_auc", "reference_models_needed")
_GROUP_STATISTICS = (
    "relative_change",
    "pearson_residual",
    "p_value",
    "observed",
    "expected",
    "tail_rate",
    "size",
)
_COLUMN_STATISTICS = ("chi_square", "p_value", "p_value_bonferroni")


_DP_FIGURES = (
    "noise_multiplier",
    "max_grad_norm",
    "epsilon",
    "delta",
    "auc_ceiling",
    "patient_auc_ceiling",
)
"""DP-SGD figures logged as metrics, for the audited recipe and for the recommendation."""


def _report_metrics(report: AuditReport) -> Iterator[tuple[tuple[str, ...], float | int | None]]:
    """(segments, value) of every figure; None where the report could not state one."""
    summary = report.summary
    for name in _DISTRIBUTIONS:
        distribution = getattr(summary, name)
        for stat in _DISTRIBUTION_STATISTICS:
            yield (name, stat), getattr(distribution, stat)
    for name in _SCALARS:
        yield (name,), getattr(summary, name)
    for auc, count in summary.tail_counts.items():
        yield ("tail_count", auc), count
    for name in _NOISE_FLOOR:
        yield ("noise_floor", name), getattr(summary.noise_floor, name)
    for name in _POWER:
        yield ("power", name), getattr(summary.power, name)
    yield ("subgroup_tail", "patients"), summary.tail.patients
    yield ("subgroup_tail", "threshold"), summary.tail.threshold

    aggregate = report.aggregate
    if aggregate is not None:
        strongest = aggregate.strongest_attack
        if strongest is not None:
            yield ("aggregate", "auc"), strongest.auc
        best_tpr: dict[str, float] = {}
        for attack, result in aggregate.attacks.items():
            yield ("attack", attack, "auc"), result.auc
            for fpr, tpr in result.tpr_at_fpr.items():
                yield ("attack", attack, "tpr_at_fpr", fpr), tpr
                if tpr is not None:
                    best_tpr[fpr] = max(best_tpr.get(fpr, -math.inf), tpr)
        for fpr, tpr in best_tpr.items():
            yield ("aggregate", "tpr_at_fpr", fpr), tpr

    if report.dp_training is not None:  # the audited recipe's DP guarantee
        for name in (*_DP_FIGURES, "records_above_ceiling"):
            yield ("dp", name), getattr(report.dp_training, name)
    recommendation = report.dp_recommendation  # the remedy, when refused
    if recommendation is not None and recommendation.recommended:
        for name in _DP_FIGURES:
            yield ("dp_recommendation", name), getattr(recommendation, name)

    if report.adaptive is not None:  # how an adaptive audit chose K
        yield ("adaptive", "looks"), len(report.adaptive.looks)
        yield ("adaptive", "reference_models_saved"), report.adaptive.reference_models_saved
        yield ("adaptive", "settled"), float(report.adaptive.stopped is not AdaptiveStop.UNSETTLED)

    for name, column in report.subgroups.items():
        escaped = escape_segment(name)
        for stat in _COLUMN_STATISTICS:
            yield ("subgroup_column", escaped, stat), getattr(column, stat)
        for value, group in column.groups.items():
            if group.status is not GroupStatus.TESTED:
                continue
            for stat in _GROUP_STATISTICS:
                yield ("subgroup", escaped, escape_segment(value), stat), getattr(group, stat)


def report_metrics(report: AuditReport) -> dict[str, float]:
    """The report's figures by full metric key (before `shorten_key`); None skipped (a
    report.json is read with `AuditReport.from_dict` first)."""
    metrics: dict[str, float] = {}
    for segments, value in _report_metrics(report):
        if value is not None and math.isfinite(value):
            metrics[join_key(*segments)] = float(value)
    return metrics


def trainer_metrics(report: AuditReport) -> dict[str, float]:
    """The headline figures (`TRAINER_METRICS`, those the report has) and `PASSED`."""
    every = report_metrics(report)
    chosen = {key: every[key] for key in TRAINER_METRICS if key in every}
    chosen[PASSED] = 1.0 if report.passed else 0.0
    return chosen


def comparison_metrics(diff: AuditComparison, against: str = "champion") -> dict[str, float]:
    """A comparison's key figures as ``privacy_gate/vs_<against>/...`` metrics: the change
    in worst patient AUC, confidently-at-risk count and aggregate AUC, and (when the
    patients could be matched) how many are newly and no longer at risk."""
    prefix = f"vs_{escape_segment(against.lower())}"
    figures: dict[str, float | None] = {
        "worst_patient_auc_change": diff.worst_patient_auc.change,
        "patients_at_risk_change": diff.patients_at_risk.change,
        "aggregate_auc_change": diff.aggregate_auc.change,
    }
    if diff.patients_matched:
        figures["newly_at_risk"] = len(diff.newly_at_risk)
        figures["no_longer_at_risk"] = len(diff.no_longer_at_risk)
    return {
        join_key(prefix, name): float(value)
        for name, value in figures.items()
        if value is not None and math.isfinite(value)
    }
