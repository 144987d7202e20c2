"""The caveats a verdict carries, read from the report's own figures: hidden small
subgroups, patients excluded from a column's tests, a noise floor that expects patients
above the at-risk AUC or that ran fewer replicates than asked for, an adaptive audit that
did not settle. The gate adds them to its decision, so a report re-evaluated later
(``check``) states the same caveats as when it was written."""

from __future__ import annotations

from privacy_gate.report_model import AdaptiveStop, AuditReport
from privacy_gate.subgroups import GroupStatus

__all__ = ["caveats"]


def caveats(report: AuditReport, *, at_risk_auc: float, min_group_size: int) -> list[str]:
    """The report's caveats, in the order the audit's stages raise them."""
    found = []
    for column, result in report.subgroups.items():
        small = [v for v, g in result.groups.items() if g.status is GroupStatus.TOO_SMALL]
        if small:
            found.append(
                f"Subgroup column {column!r}: {len(small)} group(s) with fewer than "
                f"{min_group_size} patients are tested with figures suppressed."
            )
        if result.several_values:  # None where pooled with hidden groups
            found.append(
                f"Subgroup column {column!r}: {result.several_values} patient(s) whose "
                "records carry different values are excluded from its tests (a patient-level "
                "column; declare it under record_columns if it describes records)."
            )
    floor = report.summary.noise_floor
    if floor.expected_at_risk >= 0.5:
        found.append(
            f"Noise alone is expected to put {floor.expected_at_risk:.1f} patient(s) above AUC "
            f"{at_risk_auc} (raw count); rely on the confident count."
        )
    if floor.replicates is not None and floor.replicates < floor.replicates_requested:
        found.append(
            f"Noise floor: {floor.reason}; its 95th percentile rests on fewer replicates "
            "than asked for (raise risk.null_time_budget_s to run them all)."
        )
    adaptive = report.adaptive
    if adaptive is not None and adaptive.stopped is AdaptiveStop.UNSETTLED:
        last = adaptive.looks[-1]
        found.append(
            f"Adaptive audit unsettled: max_reference_models ({adaptive.max_reference_models}) "
            f"was reached without a settled verdict; this is the verdict of the last look "
            f"(violated: {', '.join(last.violated) or 'none'})."
        )
    return found
