"""The subgroup and DP sections of the document."""

from __future__ import annotations

from privacy_gate.render.blocks import Block, CodeBlock, Heading, Paragraph, Span, Table
from privacy_gate.render.formatting import fmt_auc, fmt_float, fmt_int, fmt_p, fmt_percent
from privacy_gate.render.recommendation import recommendation_rows
from privacy_gate.render.view import (
    GroupRow,
    is_suppressed,
    min_group_size,
    n_subgroup_tests,
    representation,
    subgroup_alpha,
    subgroup_rows,
)
from privacy_gate.report_model import (
    AdaptiveStop,
    AuditReport,
    LookOutcome,
    RecommendationStatus,
    Status,
)
from privacy_gate.subgroups import HIDDEN, GroupStatus

_NOT_TESTED = {
    GroupStatus.MISSING: "missing values (not tested)",
    GroupStatus.SEVERAL_VALUES: "patients with several values (not tested)",
    GroupStatus.TOO_SMALL: GroupStatus.TOO_SMALL.value,
    GroupStatus.SUPPRESSED: GroupStatus.SUPPRESSED.value,
}


def subgroups_section(report: AuditReport) -> list[Block]:
    if not report.subgroups:
        return []
    minimum = min_group_size(report)
    rows_all = subgroup_rows(report)
    n_tests = n_subgroup_tests(report)
    alpha = subgroup_alpha(report)
    suppressed_text = f"suppressed (< {minimum} patients)"
    blocks: list[Block] = [
        Heading("Subgroups", 2),
        Paragraph(
            (
                "Observed against expected patients of each group in the exposed patient "
                "tail; each patient counts once, and the expected counts come from the "
                "null (a patient with more records reaches the tail more often by chance). "
                "A group is significant when its p-value × "
                f"{n_tests} tested groups is below the policy's subgroup_alpha {alpha:g} "
                "(Bonferroni). Groups with fewer patients than the minimum are tested too "
                "(an exact one-sided test; only a bound of its p-value is shown) and their "
                "figures are suppressed, since small counts can single out patients; with "
                "them the missing and several-valued patients form one pooled cell. A "
                "record-level column counts each patient under its highest-AUC record.",
            )
        ),
    ]
    header = (
        "Value",
        "Size",
        "Observed",
        "Expected",
        "Relative change",
        "p-value",
        "Max patient AUC",
        "Status",
    )
    numeric = (False, True, True, True, True, True, True, False)
    for column, col in report.subgroups.items():
        blocks.append(Heading(f"Subgroup column: {column}", 3))
        blocks.append(
            Paragraph(
                (
                    f"Chi-square {fmt_float(col.chi_square, 2)} "
                    f"(df {fmt_int(col.df)}), "
                    f"p = {fmt_p(col.p_value)}, "
                    f"Bonferroni across columns p = {fmt_p(col.p_value_bonferroni)}.",
                )
            )
        )
        rows: list[tuple[Span, ...]] = []
        for r in (r for r in rows_all if r.column == column):
            if r.group.status in HIDDEN:
                rows.append(
                    (r.value, "—", "—", "—", "—", "—", "—", _hidden_text(r, alpha, suppressed_text))
                )
            elif is_suppressed(r, minimum):
                rows.append((r.value, "—", "—", "—", "—", "—", "—", suppressed_text))
            else:
                rows.append(_group_cells(r, _group_status(r, n_tests, alpha)))
        if col.other_patients is not None:
            rows.append(("pooled: missing, several values, suppressed", fmt_int(
                col.other_patients), fmt_int(col.other_tail_patients), "—", "—", "—", "—",
                "not published separately"))  # fmt: skip
        if rows:
            blocks.append(Table(header, tuple(rows), numeric))
    return blocks


def _hidden_text(row: GroupRow, alpha: float, suppressed_text: str) -> str:
    bound = row.group.p_value_bound
    why = (
        suppressed_text
        if row.group.status is GroupStatus.TOO_SMALL
        else "suppressed (protects a smaller group)"
    )
    if bound is not None and bound <= alpha:
        return f"{why}; OVER-REPRESENTED (exact test, Bonferroni p < {bound:g})"
    return f"{why}; exact test: no over-representation shown"


def _group_status(row: GroupRow, n_tests: int, alpha: float) -> str:
    if row.group.status is not GroupStatus.TESTED:
        return _NOT_TESTED[row.group.status]
    direction = representation(row, n_tests, alpha)
    if direction == "over":
        return "tested, OVER-REPRESENTED (significant)"
    if direction == "under":
        return "tested, under-represented (significant; the gate tests over-representation)"
    return "tested"


def _group_cells(row: GroupRow, status: str) -> tuple[Span, ...]:
    g = row.group
    return (
        row.value,
        fmt_int(g.size),
        fmt_int(g.observed),
        fmt_float(g.expected, 1),
        fmt_percent(g.relative_change, signed=True, digits=0),
        fmt_p(g.p_value),
        fmt_auc(g.max_patient_auc),
        status,
    )


def dp_training_section(report: AuditReport) -> list[Block]:
    dp = report.dp_training
    if dp is None:
        return []
    above = dp.records_above_ceiling
    checked = dp.records_checked
    rows: tuple[tuple[Span, ...], ...] = (
        ("noise_multiplier", fmt_float(dp.noise_multiplier)),
        ("max_grad_norm", fmt_float(dp.max_grad_norm)),
        ("epsilon (PRV)", fmt_float(dp.epsilon, 2)),
        ("delta", fmt_p(dp.delta)),
        ("record AUC ceiling (PRV)", fmt_auc(dp.auc_ceiling)),
        ("patient AUC ceiling", fmt_auc(dp.patient_auc_ceiling)),
        (
            "records confidently above the ceiling (one-sided, Bonferroni 5%)",
            f"{fmt_int(above)} of {fmt_int(checked)}",
        ),
    )
    verdict = (
        "No record's AUC is confidently above what the DP-SGD recipe allows."
        if above == 0
        else "Some records' AUCs are confidently above the DP ceiling: with correct "
        "training and accounting this should not happen (check the training loop, the "
        "sampling and the recipe)."
    )
    return [
        Heading("Differential privacy of the audited recipe", 2),
        Paragraph(
            (
                "The model was trained with DP-SGD; its guarantee bounds every membership "
                "attack's AUC. ",
                verdict,
            )
        ),
        Table(("Figure", "Value"), rows, (False, True)),
    ]


def dp_recommendation_section(report: AuditReport) -> list[Block]:
    rec = report.dp_recommendation
    heading = Heading("Remedy: retrain with DP-SGD", 2)
    failed = report.decision.status is Status.FAIL
    if rec is None and failed:  # a refused model always names its remedy, or why not
        return [
            heading,
            Paragraph(
                (
                    "Not available: the report has no dp_recommendation section (it knows no "
                    "training recipe). Run 'privacy-gate recommend' with the pipeline's dataset "
                    "size, batch size and epochs.",
                )
            ),
        ]
    if rec is None or rec.status is RecommendationStatus.NOT_NEEDED:
        return []
    if not rec.recommended:
        return [
            heading,
            Paragraph((f"No DP-SGD recommendation could be computed: {rec.reason}.",)),
        ]
    blocks: list[Block] = [
        heading,
        Paragraph(
            (
                "Settings computed from this policy's patient-AUC limit for this pipeline's "
                "dataset size, batch size and epochs (Opacus PRV accountant; the AUC ceilings "
                "bound every membership attack on a model trained this way). Re-audit after "
                "retraining.",
            )
        ),
        Table(("Setting", "Value"), tuple(recommendation_rows(report)), (False, True)),
    ]
    for target, change in (rec.apply or {}).items():
        if change.strip():
            blocks.append(Paragraph((f"Apply ({target}):",)))
            blocks.append(
                CodeBlock(change.strip(), "yaml" if target.endswith("yaml") else "python")
            )
    return blocks


_STOPPED = {
    AdaptiveStop.FAIL_SETTLED: "stopped: the fail was settled with error control across looks",
    AdaptiveStop.PASS_SETTLED: "stopped: every rule passed, the power rules included",
    AdaptiveStop.UNSETTLED: "not settled: the maximum was reached; the verdict is the last look's",
}
_OUTCOME = {
    LookOutcome.FAIL_SETTLED: "fail settled",
    LookOutcome.PASS_SETTLED: "pass settled",
    LookOutcome.OPEN: "open",
}


def adaptive_section(report: AuditReport) -> list[Block]:
    """The looks of an adaptive audit (``reference_models: auto``): K at each, what it
    settled or left open, and the models saved against the fixed maximum."""
    adaptive = report.adaptive
    if adaptive is None:
        return []
    used = report.audit.reference_models
    stopped = _STOPPED[adaptive.stopped]
    rows: tuple[tuple[Span, ...], ...] = tuple(
        (
            str(number),
            fmt_int(look.reference_models),
            _OUTCOME[look.outcome],
            ", ".join(look.settled) or "-",
            ", ".join(r for r in look.violated if r not in look.settled) or "-",
        )
        for number, look in enumerate(adaptive.looks, start=1)
    )
    return [
        Heading("Adaptive audit", 2),
        Paragraph(
            (
                "Reference models were trained in rounds and the verdict checked at K = "
                f"{', '.join(str(k) for k in adaptive.schedule)} (at most "
                f"{adaptive.max_reference_models}); {stopped} at K = {used}, "
                f"{fmt_int(adaptive.reference_models_saved)} reference models fewer than the "
                "maximum. A look settles a fail only with tests spent over all "
                f"{len(adaptive.schedule)} planned looks (FDR "
                f"{fmt_float(adaptive.fdr_per_look, 4)} and level "
                f"{fmt_float(adaptive.alpha_per_look, 4)} per look); a pass needs every rule, "
                "the power rules included.",
            )
        ),
        Table(
            ("Look", "K", "Outcome", "Settled by", "Still open"),
            rows,
            (True, True, False, False, False),
        ),
    ]
