"""The DP-SGD retraining recommendation as text, for every place that refuses a model.

The recommendation itself is computed at the edge (:mod:`privacy_gate.dp.recommend`,
which needs Opacus) and stored in the report as its ``dp_recommendation`` section
(`privacy_gate.report_model.DPRecommendation`, whose docstring gives the fields); the
CLI's refusal, ``promote``, the Markdown/HTML report and the GitHub job summary all read
it from there through these functions, so they cannot disagree. A report without the
section (no training recipe known, Opacus missing) still says why there is no remedy.
"""

from __future__ import annotations

import math

from privacy_gate.report_model import AuditReport, DPRecommendation

__all__ = [
    "dp_recommendation_lines",
    "dp_recommendation_rows",
    "recommendation_lines",
    "recommendation_rows",
]


def _number(value: int | float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def _setting(value: float | None) -> str:
    """A recommended setting as it should be typed: 4 significant digits (the noise
    multiplier is rounded up to exactly that), no padding zeros."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def recommendation_rows(report: AuditReport) -> list[tuple[str, str]]:
    """(label, value) rows of the report's recommended settings and what they guarantee.

    Empty when the report holds no computed recommendation.
    """
    return dp_recommendation_rows(report.dp_recommendation)


def recommendation_lines(report: AuditReport) -> list[str]:
    """The report's recommendation as plain-text lines (no trailing newlines) for a
    terminal or a log.

    Always at least one line, so a refusal never omits the remedy silently.
    """
    return dp_recommendation_lines(report.dp_recommendation)


def dp_recommendation_rows(rec: DPRecommendation | None) -> list[tuple[str, str]]:
    """`recommendation_rows` of a ``dp_recommendation`` section (None: none)."""
    if rec is None or not rec.recommended:
        return []
    return [
        ("noise_multiplier", _setting(rec.noise_multiplier)),
        ("max_grad_norm", _setting(rec.max_grad_norm)),
        ("batch_size (expected, Poisson sampling)", _number(rec.batch_size, 0)),
        ("epochs", _number(rec.epochs, 0)),
        ("sample_rate", _number(rec.sample_rate, 5)),
        ("steps", _number(rec.steps, 0)),
        ("epsilon", _number(rec.epsilon, 2)),
        ("delta (1/N)", _number(rec.delta, 3)),
        ("record AUC ceiling (PRV)", _number(rec.auc_ceiling, 4)),
        ("record AUC ceiling (mu-GDP check)", _number(rec.auc_ceiling_gdp, 4)),
        ("patient AUC ceiling", _number(rec.patient_auc_ceiling, 4)),
        ("target patient AUC limit", _number(rec.auc_limit, 3)),
        ("re-audit", "adaptive, until the verdict is settled"),
        ("reference models the power rules need", _number(rec.reference_models, 0)),
    ]


def dp_recommendation_lines(rec: DPRecommendation | None) -> list[str]:
    """`recommendation_lines` of a ``dp_recommendation`` section (None: none), e.g. one
    ``privacy-gate recommend`` just computed."""
    if rec is None or not rec.recommended:
        reason = rec.reason if rec is not None else None
        return [
            "DP-SGD recommendation: not available"
            + (f" ({reason})" if reason else " (the report has no dp_recommendation section)")
            + "."
        ]
    source = rec.auc_limit_source
    k = rec.max_records_per_patient
    lines = [
        "DP-SGD recommendation: retrain with DP-SGD (Opacus, Poisson sampling) at "
        f"noise_multiplier={_setting(rec.noise_multiplier)}, "
        f"max_grad_norm={_setting(rec.max_grad_norm)}, "
        f"batch_size={_number(rec.batch_size, 0)}, "
        f"epochs={_number(rec.epochs, 0)}: "
        f"epsilon={_number(rec.epsilon, 2)} at delta={_number(rec.delta, 3)}, "
        f"record AUC ceiling {_number(rec.auc_ceiling, 4)}, patient AUC ceiling "
        f"{_number(rec.patient_auc_ceiling, 4)} (limit "
        f"{_number(rec.auc_limit, 3)}"
        + (f" from {source}" if source is not None else "")
        + (f"; up to {k} records per patient" if k is not None else "")
        + ")"
        + (
            f"; re-audit adaptively (reference_models: auto), which trains at least the "
            f"{rec.reference_models} reference models the power rules need."
            if rec.reference_models is not None
            else "; re-audit adaptively (reference_models: auto)."
        )
    ]
    for target, change in (rec.apply or {}).items():
        if change.strip():
            lines.append(f"  apply ({target}):")
            lines += [f"    {line}" for line in change.strip().splitlines()]
    return lines
