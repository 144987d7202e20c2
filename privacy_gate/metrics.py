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
- ``subgroup/<column>/<value>/<statistic>`` for tested groups and
  ``subgroup_column/<column>/<statistic>``.

Figures that are None (not finite in the audit) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from privacy_gate.metric_keys import escape_segment, join_key

__all__ = ["PASSED", "TRAINER_METRICS", "report_metrics", "section", "trainer_metrics"]

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
_SCALARS = ("patients_at_risk", "patients_at_risk_raw", "fraction_at_risk")
_NOISE_FLOOR = ("max_patient_auc_q95", "expected_at_risk", "reference_models_needed")
_POWER = ("detectable_auc", "reference_models_needed")
_TAIL = ("patients", "threshold")
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


def _number(value: Any) -> float | None:
    """A finite float, or None for None, non-numbers, booleans and non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def section(report: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A report section as a mapping (missing or malformed: empty)."""
    section = report.get(name)
    return section if isinstance(section, Mapping) else {}


_DP_FIGURES = (
    "noise_multiplier",
    "max_grad_norm",
    "epsilon",
    "delta",
    "auc_ceiling",
    "patient_auc_ceiling",
)
"""DP-SGD figures logged as metrics, for the audited recipe and for the recommendation."""


def _report_metrics(report: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(segments, value) of every figure; values still unchecked."""
    summary = section(report, "summary")
    for name in _DISTRIBUTIONS:
        for stat, value in section(summary, name).items():
            yield (name, str(stat)), value
    for name in _SCALARS:
        yield (name,), summary.get(name)
    for auc, count in section(summary, "tail_counts").items():
        yield ("tail_count", str(auc)), count
    floor = section(summary, "noise_floor")
    for name in _NOISE_FLOOR:
        yield ("noise_floor", name), floor.get(name)
    power = section(summary, "power")
    for name in _POWER:
        yield ("power", name), power.get(name)
    tail = section(summary, "tail")
    for name in _TAIL:
        yield ("subgroup_tail", name), tail.get(name)

    aggregate = section(report, "aggregate")
    attacks = section(aggregate, "attacks")
    strongest = section(attacks, str(aggregate.get("strongest")))
    if strongest:
        yield ("aggregate", "auc"), strongest.get("auc")
    best_tpr: dict[str, float] = {}
    for attack, result in attacks.items():
        if not isinstance(result, Mapping):
            continue
        yield ("attack", str(attack), "auc"), result.get("auc")
        for fpr, tpr in section(result, "tpr_at_fpr").items():
            yield ("attack", str(attack), "tpr_at_fpr", str(fpr)), tpr
            number = _number(tpr)
            if number is not None:
                best_tpr[str(fpr)] = max(best_tpr.get(str(fpr), -math.inf), number)
    for fpr, tpr in best_tpr.items():
        yield ("aggregate", "tpr_at_fpr", fpr), tpr

    dp_training = section(report, "dp_training")  # the audited recipe's DP guarantee
    for name in _DP_FIGURES:
        yield ("dp", name), dp_training.get(name)
    yield ("dp", "records_above_ceiling"), dp_training.get("records_above_ceiling")
    recommendation = section(report, "dp_recommendation")  # the remedy, when refused
    if recommendation.get("status") == "recommended":
        for name in _DP_FIGURES:
            yield ("dp_recommendation", name), recommendation.get(name)

    for column, result in section(report, "subgroups").items():
        if not isinstance(result, Mapping):
            continue
        escaped = escape_segment(str(column))
        for stat in _COLUMN_STATISTICS:
            yield ("subgroup_column", escaped, stat), result.get(stat)
        for value, group in section(result, "groups").items():
            if not isinstance(group, Mapping) or group.get("status") != "tested":
                continue
            group_segment = escape_segment(str(value))
            for stat in _GROUP_STATISTICS:
                yield ("subgroup", escaped, group_segment, stat), group.get(stat)


def report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's figures by full metric key (before `shorten_key`); None skipped.

    >>> report_metrics({"summary": {"tail_counts": {"0.9": 3}, "power": {"detectable_auc": None}}})
    {'privacy_gate/tail_count/0.9': 3.0}
    """
    metrics: dict[str, float] = {}
    for segments, value in _report_metrics(report):
        number = _number(value)
        if number is not None:
            metrics[join_key(*segments)] = number
    return metrics


def trainer_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The headline figures (`TRAINER_METRICS`, those the report has) and `PASSED`."""
    every = report_metrics(report)
    chosen = {key: every[key] for key in TRAINER_METRICS if key in every}
    chosen[PASSED] = 1.0 if section(report, "decision").get("status") == "pass" else 0.0
    return chosen
