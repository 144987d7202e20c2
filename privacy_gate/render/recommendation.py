"""The DP-SGD retraining recommendation as text, for every place that refuses a model.

The recommendation itself is computed at the edge (:mod:`privacy_gate.dp.recommend`,
which needs Opacus) and stored in the report as ``report["dp_recommendation"]``; the CLI's
refusal, ``promote``, the Markdown/HTML report and the GitHub job summary all read it
from there through these functions, so they cannot disagree. The input is read
leniently: a report without the section (older report, Opacus missing) still renders.

Schema of ``report["dp_recommendation"]`` (all keys optional except ``status``):

- ``status``: ``"recommended"`` (settings computed) or ``"unavailable"`` (``reason`` says why);
- ``reason``: one sentence;
- ``auc_limit`` and ``auc_limit_source``: the gate's patient-AUC limit T and the policy key
  it came from; ``max_records_per_patient``; ``target_mu`` (per record, after the group
  division) and ``target_record_auc``;
- ``noise_multiplier``, ``max_grad_norm``, ``epsilon``, ``delta``, ``sample_rate``,
  ``batch_size``, ``dataset_size``, ``epochs``, ``steps``, ``accountant``;
- ``auc_ceiling`` (PRV trade-off curve, per record), ``auc_ceiling_gdp`` (mu-GDP
  cross-check), ``patient_auc_ceiling`` (for the patient with the most records);
- ``reference_models``: K for the re-audit of the retrained model;
- ``apply``: mapping of a target (``lightning``, ``audit_yaml``, ``opacus``) to the code
  or config change that applies the settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["recommendation", "recommendation_lines", "recommendation_rows"]


def recommendation(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """The report's ``dp_recommendation`` section, or an empty mapping."""
    section = report.get("dp_recommendation")
    return section if isinstance(section, Mapping) else {}


def _number(value: object, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def _setting(value: object) -> str:
    """A recommended setting as it should be typed: 4 significant digits (the noise
    multiplier is rounded up to exactly that), no padding zeros."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def recommendation_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the recommended settings and what they guarantee.

    Empty when the report holds no computed recommendation.
    """
    rec = recommendation(report)
    if rec.get("status") != "recommended":
        return []
    rows = [
        ("noise_multiplier", _setting(rec.get("noise_multiplier"))),
        ("max_grad_norm", _setting(rec.get("max_grad_norm"))),
        ("batch_size (expected, Poisson sampling)", _number(rec.get("batch_size"), 0)),
        ("epochs", _number(rec.get("epochs"), 0)),
        ("sample_rate", _number(rec.get("sample_rate"), 5)),
        ("steps", _number(rec.get("steps"), 0)),
        ("epsilon", _number(rec.get("epsilon"), 2)),
        ("delta (1/N)", _number(rec.get("delta"), 3)),
        ("record AUC ceiling (PRV)", _number(rec.get("auc_ceiling"), 4)),
        ("record AUC ceiling (mu-GDP check)", _number(rec.get("auc_ceiling_gdp"), 4)),
        ("patient AUC ceiling", _number(rec.get("patient_auc_ceiling"), 4)),
        ("target patient AUC limit", _number(rec.get("auc_limit"), 3)),
        ("reference models for the re-audit", _number(rec.get("reference_models"), 0)),
    ]
    return rows


def recommendation_lines(report: Mapping[str, Any]) -> list[str]:
    """Plain-text lines (no trailing newlines) for a terminal or a log.

    Always at least one line, so a refusal never omits the remedy silently.
    """
    rec = recommendation(report)
    status = rec.get("status")
    if status != "recommended":
        reason = rec.get("reason") if isinstance(rec.get("reason"), str) else None
        return [
            "DP-SGD recommendation: not available"
            + (f" ({reason})" if reason else " (the report has no dp_recommendation section)")
            + "."
        ]
    source = rec.get("auc_limit_source")
    k = rec.get("max_records_per_patient")
    lines = [
        "DP-SGD recommendation: retrain with DP-SGD (Opacus, Poisson sampling) at "
        f"noise_multiplier={_setting(rec.get('noise_multiplier'))}, "
        f"max_grad_norm={_setting(rec.get('max_grad_norm'))}, "
        f"batch_size={_number(rec.get('batch_size'), 0)}, "
        f"epochs={_number(rec.get('epochs'), 0)}: "
        f"epsilon={_number(rec.get('epsilon'), 2)} at delta={_number(rec.get('delta'), 3)}, "
        f"record AUC ceiling {_number(rec.get('auc_ceiling'), 4)}, patient AUC ceiling "
        f"{_number(rec.get('patient_auc_ceiling'), 4)} (limit "
        f"{_number(rec.get('auc_limit'), 3)}"
        + (f" from {source}" if isinstance(source, str) else "")
        + (f"; up to {k} records per patient" if isinstance(k, int) else "")
        + ")"
        + (
            f"; re-audit with {rec['reference_models']} reference models."
            if isinstance(rec.get("reference_models"), int)
            else "."
        )
    ]
    apply = rec.get("apply")
    if isinstance(apply, Mapping):
        for target, change in apply.items():
            if isinstance(change, str) and change.strip():
                lines.append(f"  apply ({target}):")
                lines += [f"    {line}" for line in change.strip().splitlines()]
    return lines
