"""The report's content, built once as a `blocks.Document` (:func:`build_document`):
verdict, key figures, figures, attacks, the exposed tail, most exposed patients,
caveats and provenance."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from privacy_gate.render.blocks import (
    Block,
    Bullets,
    Code,
    Document,
    Heading,
    Image,
    Paragraph,
    Span,
    Strong,
    Table,
    Text,
    Verdict,
)
from privacy_gate.render.formatting import (
    fmt_auc,
    fmt_float,
    fmt_fpr,
    fmt_int,
    fmt_patients,
    fmt_percent,
    fmt_rate,
    fmt_value,
    sorted_numeric_keys,
)
from privacy_gate.render.sections import (
    adaptive_section,
    dp_recommendation_section,
    dp_training_section,
    subgroups_section,
)
from privacy_gate.render.view import is_suppressed, min_group_size, subgroup_rows
from privacy_gate.report_model import AuditReport, Status, TopPatient

PSEUDONYM_SCHEME = "hmac-sha256"
"""The pseudonym scheme of reports whose patient keys may be published."""
PATIENT_KEY = re.compile(r"[0-9a-f]{16}")
"""What a published patient key looks like (anything else is hidden in a job summary)."""

CITATION = 'Knolle et al., "Disparate privacy risks from medical AI", Nature 656 (2026).'
"""The study whose method the audit follows; cited in every rendering."""


FIGURE_ORDER = ("patient_auc_survival", "patient_auc_histogram", "attack_roc", "subgroups")
"""Names :func:`~privacy_gate.render.render_plots` writes, in reading order."""

_CAPTIONS = {
    "patient_auc_survival": "Share of patients whose AUC is at least x (log scale), "
    "with its 95% band, the at-risk threshold and the noise floor.",
    "patient_auc_histogram": "Distribution of patient AUC (log counts).",
    "attack_roc": "ROC of each attack on the release candidate (log-log); the diagonal is chance.",
    "subgroups": "Over-representation of each tested subgroup in the exposed tail "
    "(relative change of observed over expected tail patients).",
}


# ------------------------------------------------------------------ content building
def build_document(
    report: AuditReport, figures: Mapping[str, str], comparison: Sequence[Block] = ()
) -> Document:
    """The report's content, verdict first, as renderer-neutral blocks.

    Args:
        report: The audit report.
        figures: Figure name (see :data:`FIGURE_ORDER`) to image source.
        comparison: the "Against the champion" blocks
            (`privacy_gate.render.comparison.comparison_section`), after the key figures.
    """
    blocks: list[Block] = [_verdict(report)]
    blocks += _key_figures(report)
    blocks += comparison
    blocks += adaptive_section(report)
    blocks += _figures(figures)
    blocks += _aggregate(report)
    blocks += _tail(report)
    blocks += subgroups_section(report)
    blocks += _top_patients(report)
    blocks += dp_training_section(report)
    blocks += dp_recommendation_section(report)
    blocks += _caveats(report)
    blocks += _provenance(report)
    blocks += [Heading("Reference", 2), Paragraph((CITATION,))]
    return Document(title="Privacy audit: membership-inference risk", blocks=tuple(blocks))


def summary_sections(report: AuditReport, *, top_patients: int) -> list[Block]:
    """The sections of a short summary (a CI job summary): key figures, the adaptive
    audit's looks, subgroups, the most exposed patients (pseudonyms only, the first
    ``top_patients``), the DP-SGD recommendation and caveats: the same blocks as the full
    report's."""
    blocks = _key_figures(report)
    blocks += adaptive_section(report)
    blocks += subgroups_section(report)
    blocks += _top_patients(report, limit=top_patients, pseudonyms_only=True)
    blocks += dp_recommendation_section(report)
    blocks += _caveats(report)
    return blocks


def violations_sentence(n: int) -> str:
    """The verdict of a failed gate in words (the report and the job summary say it alike)."""
    return (
        f"{n} rule{'s' if n != 1 else ''} of the audit policy "
        f"{'are' if n != 1 else 'is'} violated; the model must not be released as is."
    )


def _verdict(report: AuditReport) -> Verdict:
    decision = report.decision
    violations = decision.violations
    label = Strong(f"Verdict: {decision.status.value.upper()}")
    if decision.status is Status.PASS:
        headline: Text = (label, " — the model meets every rule of the audit policy.")
    elif decision.status is Status.FAIL:
        headline = (label, f" — {violations_sentence(len(violations))}")
    else:
        headline = (label, " — the audit could not be evaluated; the gate fails closed.")
    items = tuple(
        (
            v.message,
            f" (value {fmt_value(v.value)}, limit {fmt_value(v.limit)}; rule ",
            Code(v.rule),
            ")",
        )
        for v in violations
    )
    return Verdict(status=decision.status.value, headline=headline, items=items)


def _key_figures(report: AuditReport) -> list[Block]:
    audit, summary = report.audit, report.summary
    floor, power = summary.noise_floor, summary.power
    threshold = summary.at_risk_auc
    method_note = floor.method.value
    if floor.replicates is not None:
        method_note = f"{method_note}, {floor.replicates:,} replicates"
    if floor.reason:
        method_note = f"{method_note}; {floor.reason}"
    rows: list[tuple[Span, ...]] = [
        ("Reference models (K)", fmt_int(audit.reference_models)),
        ("Records", fmt_int(audit.records)),
        ("Patients", fmt_int(audit.patients)),
        ("Worst patient AUC", fmt_auc(summary.patient_auc.max)),
        ("Median patient AUC", fmt_auc(summary.patient_auc.median)),
        ("99th percentile of patient AUC", fmt_auc(summary.patient_auc.q99)),
        ("Worst record AUC", fmt_auc(summary.record_auc.max)),
        (
            f"Patients confidently at risk (AUC above {fmt_auc(threshold)}, "
            f"FDR {fmt_float(summary.fdr, 2)})",
            fmt_int(summary.patients_at_risk),
        ),
        (
            f"Patients with AUC above {fmt_auc(threshold)} (point estimate, untested)",
            fmt_int(summary.patients_at_risk_raw),
        ),
        (
            "Share of patients confidently at risk",
            fmt_percent(summary.fraction_at_risk, digits=2),
        ),
        (
            f"Noise floor: 95% null maximum patient AUC ({method_note})",
            fmt_auc(floor.max_patient_auc_q95),
        ),
        (
            "Patients expected above the at-risk AUC from noise alone",
            fmt_float(floor.expected_at_risk, 2),
        ),
        (
            "Reference models needed for the noise floor to sit below the limits",
            fmt_int(floor.reference_models_needed),
        ),
        (
            f"Smallest record AUC the at-risk test finds with "
            f"{fmt_percent(power.power, digits=0)} power at this K",
            fmt_float(power.detectable_auc, 4),  # 0.9994 vs 0.9999 matters
        ),
        *(
            [
                (
                    f"The same for one leaking record of a patient with {power.max_records} "
                    "records (the most in the pool)",
                    fmt_float(power.detectable_auc_max_records, 4),
                )
            ]
            if power.detectable_auc_max_records is not None
            else []
        ),
        (
            "Reference models the policy's power rules need",
            fmt_int(power.reference_models_needed),
        ),
    ]
    aggregate = report.aggregate
    attack = aggregate.strongest_attack if aggregate is not None else None
    if aggregate is not None and attack is not None:
        rows.append(("Strongest aggregate attack", Code(aggregate.strongest)))
        rows.append(("Strongest attack AUC", fmt_auc(attack.auc)))
        for key in sorted_numeric_keys(attack.tpr_at_fpr):
            rows.append(
                (f"Strongest attack TPR at FPR {fmt_fpr(key)}", fmt_rate(attack.tpr_at_fpr[key]))
            )
    return [
        Heading("Key figures", 2),
        Table(("Quantity", "Value"), tuple(rows), (False, True)),
    ]


def _figures(figures: Mapping[str, str]) -> list[Block]:
    if not figures:
        return []
    names = [n for n in FIGURE_ORDER if n in figures]
    names += sorted(n for n in figures if n not in FIGURE_ORDER)
    images: list[Block] = [
        Image(name=n, caption=_CAPTIONS.get(n, n.replace("_", " ")), source=figures[n])
        for n in names
    ]
    return [Heading("Figures", 2), *images]


def _aggregate(report: AuditReport) -> list[Block]:
    aggregate = report.aggregate
    if aggregate is None or not aggregate.attacks:
        return []
    attacks = aggregate.attacks
    fpr_keys = sorted_numeric_keys({k for a in attacks.values() for k in a.tpr_at_fpr})
    rows: list[tuple[Span, ...]] = []
    for name, a in attacks.items():
        label: Span = Code(name)
        rows.append(
            (
                label,
                fmt_auc(a.auc),
                *(fmt_rate(a.tpr_at_fpr.get(k)) for k in fpr_keys),
                "strongest, gated" if name == aggregate.strongest else "",
            )
        )
    header = ("Attack", "AUC", *(f"TPR at FPR {fmt_fpr(k)}" for k in fpr_keys), "Note")
    return [
        Heading("Aggregate attacks on the release candidate", 2),
        Paragraph(
            (
                f"Members: {fmt_int(aggregate.members)}; "
                f"non-members: {fmt_int(aggregate.non_members)}. "
                "An aggregate AUC near 0.5 does not mean every patient is safe: "
                "the patient-level figures above show the exposed tail.",
            )
        ),
        Table(header, tuple(rows), (False, True, *(True for _ in fpr_keys), False)),
    ]


def _tail(report: AuditReport) -> list[Block]:
    counts = report.summary.tail_counts
    patients = report.audit.patients
    blocks: list[Block] = [Heading("Exposed tail", 2)]
    if counts:
        rows: list[tuple[Span, ...]] = []
        for key in sorted_numeric_keys(counts):
            share = counts[key] / patients if patients else None
            rows.append((f"≥ {key}", fmt_int(counts[key]), fmt_percent(share, digits=2)))
        blocks.append(
            Table(
                ("Patient AUC", "Patients", "Share of patients"), tuple(rows), (False, True, True)
            )
        )
    tail = report.summary.tail
    blocks.append(
        Paragraph(
            (
                "Patient tail for the subgroup analysis: the "
                f"{fmt_patients(tail.patients)} with patient AUC at least "
                f"{fmt_auc(tail.threshold)} (top {fmt_int(tail.target)} above the "
                f"{fmt_percent(tail.quantile, digits=1)} quantile, "
                "ties at the boundary included).",
            )
        )
    )
    return blocks


def _top_patients(
    report: AuditReport, *, limit: int | None = None, pseudonyms_only: bool = False
) -> list[Block]:
    """The most exposed patients. ``pseudonyms_only`` (a CI job summary, which anyone with
    access to the repository reads): never a raw id, a report with raw ids shows a notice
    instead, and a key that is not a pseudonym is hidden."""
    top = report.summary.top_patients
    if not top:
        return [Heading("Most exposed patients", 2), Paragraph(("The report lists no patients.",))]
    scheme = report.audit.pseudonyms
    raw = scheme == "raw"
    if pseudonyms_only and scheme != PSEUDONYM_SCHEME:
        return [
            Heading("Most exposed patients", 2),
            Paragraph(
                (
                    f"Not shown: the report identifies patients by {scheme or '?'} ids, not by "
                    "keyed pseudonyms, and a job summary must never hold patient ids. Re-run "
                    "the audit without --raw-ids.",
                )
            ),
        ]
    if raw:
        note: Text = (
            Strong("Warning:"),
            " this report holds RAW patient ids (the audit ran with raw ids). Per-patient "
            "figures are membership evidence: share it only with people entitled to the ids.",
        )
    else:
        note = (
            "Patient keys are keyed hashes (HMAC-SHA256, truncated) of the patient ids; the "
            "raw ids are not in this report, and the key is held only by the auditing "
            "pipeline.",
        )

    def key(patient: TopPatient) -> Span:
        if pseudonyms_only and not PATIENT_KEY.fullmatch(patient.patient_key):
            return "(not a pseudonym; hidden)"
        return Code(patient.patient_key)

    confident = report.summary.at_risk_patients
    marks = set(confident or ())

    def mark(patient: TopPatient) -> tuple[Span, ...]:
        if confident is None:
            return ()
        return ("yes" if patient.patient_key in marks else "no",)

    rows = tuple(
        (
            str(rank),
            key(p),
            fmt_int(p.n_records),
            fmt_auc(p.auc_max),
            fmt_auc(p.auc_mean),
            fmt_float(p.auc_se),
            *mark(p),
        )
        for rank, p in enumerate(top[:limit], start=1)
    )
    header: tuple[str, ...] = ("Rank", "Patient key", "Records", "Max AUC", "Mean AUC", "SE")
    numeric: tuple[bool, ...] = (True, False, True, True, True, True)
    blocks: list[Block] = [Heading("Most exposed patients", 2), Paragraph(note)]
    if confident is not None:
        header, numeric = (*header, "Confidently at risk"), (*numeric, False)
        blocks.append(
            Paragraph(
                (
                    "Confidently at risk: the patient's AUC is above the at-risk AUC "
                    f"{fmt_auc(report.summary.at_risk_auc)} by the audit's test at its FDR "
                    "(Benjamini-Hochberg), not by the point estimate alone: a high Max AUC "
                    "with a large SE may be noise.",
                )
            )
        )
    return [*blocks, Table(header, rows, numeric)]


def _caveats(report: AuditReport) -> list[Block]:
    floor = report.summary.noise_floor
    threshold = report.summary.at_risk_auc
    q95 = floor.max_patient_auc_q95
    needed = floor.reference_models_needed
    power = (
        f"Statistical power: {fmt_int(report.audit.reference_models)} reference models. "
        "With no leakage at all, noise "
        f"alone would push the highest patient AUC to {fmt_auc(q95)} (95th percentile of "
        f"the null maximum), against an at-risk AUC of {fmt_auc(threshold)}. "
    )
    if q95 >= threshold:
        power += (
            "The noise floor is at or above the at-risk AUC, so high patient AUCs here may be "
            "noise and the audit cannot tell at-risk patients apart; "
        )
    else:
        power += "High AUCs above the floor are unlikely to be noise alone; "
    power += (
        f"about {fmt_int(needed)} reference models are needed for the floor to sit below "
        "the policy's limits."
        if needed is not None
        else "the number of reference models needed was not estimated."
    )
    items: list[Text] = [(power,)]
    minimum = min_group_size(report)
    suppressed = [r for r in subgroup_rows(report) if is_suppressed(r, minimum)]
    small = (
        f"Small groups: groups with fewer than {fmt_patients(minimum)} are not tested and "
        "their figures are suppressed. "
    )
    if suppressed:
        names = ", ".join(f"{r.column} = {r.value}" for r in suppressed)
        small += f"Suppressed here: {names}. Small groups can still hold exposed patients."
    else:
        small += "No group was suppressed in this audit."
    items.append((small,))
    items.append(
        (
            "Scope: the audit measures an empirical lower bound on membership risk against "
            "these attacks with these reference models. It is not a proof of privacy: "
            "stronger attacks or more reference models can reveal more. Only training with "
            "differential privacy (e.g. DP-SGD) gives a formal guarantee.",
        )
    )
    for warning in report.decision.warnings:
        items.append(("Warning: ", warning))
    return [Heading("Caveats", 2), Bullets(tuple(items))]


#: the input digests an audit records (``audit.inputs``), each shown where it exists: a
#: `score` audit has signals and records files, a training audit the pool's tensors.
_INPUT_DIGESTS = (
    ("signals_sha256", "Signals SHA-256"),
    ("records_sha256", "Records SHA-256"),
    ("data_sha256", "Data SHA-256 (the pool's inputs and labels)"),
)


def _provenance(report: AuditReport) -> list[Block]:
    audit = report.audit
    rows: tuple[tuple[Span, ...], ...] = (
        ("Report schema", report.schema_version),
        ("privacy-gate version", audit.package_version),
        ("Created", audit.created_at),
        ("Release candidate attacked", "yes" if audit.target else "no"),
        ("Patient identifiers", audit.pseudonyms),
        *(
            (label, Code(str(audit.inputs[key])))
            for key, label in _INPUT_DIGESTS
            if key in audit.inputs
        ),
        *((("Model weights SHA-256", Code(audit.model_sha256)),) if audit.model_sha256 else ()),
        ("Policy SHA-256", Code(audit.policy_sha256)),
    )
    return [Heading("Audit provenance", 2), Table(("Item", "Value"), rows, (False, False))]
