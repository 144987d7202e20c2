"""The subgroup and DP sections of the document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from privacy_gate.render.blocks import Block, CodeBlock, Heading, Paragraph, Span, Table
from privacy_gate.render.formatting import fmt_auc, fmt_float, fmt_int, fmt_p, fmt_percent
from privacy_gate.render.recommendation import recommendation, recommendation_rows
from privacy_gate.render.view import (
    as_float,
    as_int,
    as_mapping,
    as_str,
    is_significant,
    is_suppressed,
    min_group_size,
    subgroup_alpha,
    subgroup_rows,
    tested_rows,
)


def subgroups_section(report: Mapping[str, Any]) -> list[Block]:
    columns = as_mapping(report.get("subgroups"))
    if not columns:
        return []
    minimum = min_group_size(report)
    rows_all = subgroup_rows(report)
    n_tests = len(tested_rows(report))
    alpha = subgroup_alpha(report)
    suppressed_text = (
        f"suppressed (< {minimum} patients)" if minimum is not None else "suppressed (too small)"
    )
    blocks: list[Block] = [
        Heading("Subgroups", 2),
        Paragraph(
            (
                "Observed against expected patients of each group in the exposed patient "
                "tail; each patient counts once. A group is significant when its p-value × "
                f"{n_tests} tested groups is below the policy's subgroup_alpha {alpha:g} "
                "(Bonferroni). Groups with fewer patients than the minimum are not tested and "
                "their figures are suppressed, since small counts can single out patients. "
                "Patients whose records disagree on the value are left out of the column.",
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
    for column, entry in columns.items():
        col = as_mapping(entry)
        blocks.append(Heading(f"Subgroup column: {column}", 3))
        blocks.append(
            Paragraph(
                (
                    f"Chi-square {fmt_float(as_float(col.get('chi_square')), 2)} "
                    f"(df {fmt_int(as_int(col.get('df')))}), "
                    f"p = {fmt_p(as_float(col.get('p_value')))}, "
                    f"Bonferroni across columns p = "
                    f"{fmt_p(as_float(col.get('p_value_bonferroni')))}.",
                )
            )
        )
        rows: list[tuple[Span, ...]] = []
        for r in (r for r in rows_all if r.column == str(column)):
            if is_suppressed(r, minimum):
                rows.append((r.value, "—", "—", "—", "—", "—", "—", suppressed_text))
                continue
            if r.status == "tested":
                significant = is_significant(r, n_tests, alpha)
                status = "tested, significant" if significant else "tested"
            elif r.status == "missing":
                status = "missing values (not tested)"
            elif r.status == "several_values":
                status = "patients with several values (not tested)"
            else:
                status = r.status
            rows.append(
                (
                    r.value,
                    fmt_int(r.size),
                    fmt_int(r.observed),
                    fmt_float(r.expected, 1),
                    fmt_percent(r.relative_change, signed=True, digits=0),
                    fmt_p(r.p_value),
                    fmt_auc(r.max_patient_auc),
                    status,
                )
            )
        if rows:
            blocks.append(Table(header, tuple(rows), numeric))
    return blocks


def dp_training_section(report: Mapping[str, Any]) -> list[Block]:
    dp = as_mapping(report.get("dp_training"))
    if not dp:
        return []
    above = as_int(dp.get("records_above_ceiling"))
    checked = as_int(dp.get("records_checked"))
    rows: tuple[tuple[Span, ...], ...] = (
        ("noise_multiplier", fmt_float(as_float(dp.get("noise_multiplier")))),
        ("max_grad_norm", fmt_float(as_float(dp.get("max_grad_norm")))),
        ("epsilon (PRV)", fmt_float(as_float(dp.get("epsilon")), 2)),
        ("delta", fmt_p(as_float(dp.get("delta")))),
        ("record AUC ceiling (PRV)", fmt_auc(as_float(dp.get("auc_ceiling")))),
        ("patient AUC ceiling", fmt_auc(as_float(dp.get("patient_auc_ceiling")))),
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


def dp_recommendation_section(report: Mapping[str, Any]) -> list[Block]:
    rec = recommendation(report)
    status = rec.get("status")
    heading = Heading("Remedy: retrain with DP-SGD", 2)
    failed = as_str(as_mapping(report.get("decision")).get("status")) == "fail"
    if status is None and failed:  # a refused model always names its remedy, or why not
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
    if status in (None, "not_needed"):
        return []
    if status != "recommended":
        reason = as_str(rec.get("reason"), "no reason given")
        return [heading, Paragraph((f"No DP-SGD recommendation could be computed: {reason}.",))]
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
    apply = as_mapping(rec.get("apply"))
    for target, change in apply.items():
        if isinstance(change, str) and change.strip():
            blocks.append(Paragraph((f"Apply ({target}):",)))
            blocks.append(
                CodeBlock(change.strip(), "yaml" if target.endswith("yaml") else "python")
            )
    return blocks
