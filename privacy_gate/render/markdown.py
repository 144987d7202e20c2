"""Human-readable audit report: the content model and its Markdown rendering.

The report content is built once, as a small document model of plain-text blocks
(:func:`build_document`), so the Markdown and the HTML renderings cannot drift apart;
each renderer escapes every string itself. The input is only the JSON report dict,
read leniently: an ``error`` report may lack whole sections and must still render.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from privacy_gate.config import GateConfig
from privacy_gate.render.recommendation import recommendation, recommendation_rows

__all__ = ["render_markdown"]

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


# --------------------------------------------------------------------------- reading
def as_mapping(value: object) -> Mapping[str, Any]:
    """Return ``value`` if it is a JSON object, else an empty one (missing sections)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: object) -> list[Any]:
    """Return ``value`` as a list if it is a JSON array, else an empty list."""
    return list(value) if isinstance(value, list | tuple) else []


def as_float(value: object) -> float | None:
    """Return a JSON number as float; ``None`` for null, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def as_int(value: object) -> int | None:
    """Return a JSON integer (or integral float) as int; ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_str(value: object, default: str = "") -> str:
    """Return a JSON string, or ``default`` for anything else."""
    return value if isinstance(value, str) else default


@dataclass(frozen=True)
class GroupRow:
    """One subgroup value of one subgroup column, as read from the report."""

    column: str
    value: str
    status: str
    size: int | None
    observed: int | None
    expected: float | None
    relative_change: float | None
    p_value: float | None
    p_value_adjusted: float | None
    tail_rate: float | None
    max_patient_auc: float | None


def subgroup_alpha(report: Mapping[str, Any]) -> float:
    """The gate's family-wise level for subgroup tests, as the audit's policy set it.

    Reports without a policy (error reports) fall back to the policy default, so a
    rendering never calls a group significant at a level the gate did not use.
    """
    gate = as_mapping(as_mapping(as_mapping(report.get("audit")).get("config")).get("gate"))
    alpha = as_float(gate.get("subgroup_alpha"))
    return GateConfig().subgroup_alpha if alpha is None else alpha


def min_group_size(report: Mapping[str, Any]) -> int | None:
    """The policy's minimum group size, below which group figures are suppressed."""
    risk = as_mapping(as_mapping(as_mapping(report.get("audit")).get("config")).get("risk"))
    return as_int(risk.get("min_group_size"))


def subgroup_rows(report: Mapping[str, Any]) -> list[GroupRow]:
    """All groups of all subgroup columns, in report order."""
    rows: list[GroupRow] = []
    for column, entry in as_mapping(report.get("subgroups")).items():
        for value, group in as_mapping(as_mapping(entry).get("groups")).items():
            g = as_mapping(group)
            rows.append(
                GroupRow(
                    column=str(column),
                    value=str(value),
                    status=as_str(g.get("status"), "unknown"),
                    size=as_int(g.get("size")),
                    observed=as_int(g.get("observed")),
                    expected=as_float(g.get("expected")),
                    relative_change=as_float(g.get("relative_change")),
                    p_value=as_float(g.get("p_value")),
                    p_value_adjusted=as_float(g.get("p_value_adjusted")),
                    tail_rate=as_float(g.get("tail_rate")),
                    max_patient_auc=as_float(g.get("max_patient_auc")),
                )
            )
    return rows


def is_suppressed(row: GroupRow, minimum: int | None) -> bool:
    """Whether a group's figures must be hidden: too small to publish, whatever its status.

    Small groups are suppressed because their counts can single out patients.
    """
    if row.status == "too_small":
        return True
    return minimum is not None and row.size is not None and row.size < minimum


def tested_rows(report: Mapping[str, Any]) -> list[GroupRow]:
    """Groups that were tested and may be published."""
    minimum = min_group_size(report)
    return [
        r for r in subgroup_rows(report) if r.status == "tested" and not is_suppressed(r, minimum)
    ]


def is_significant(row: GroupRow, n_tests: int, alpha: float) -> bool:
    """Bonferroni over all tested groups of all columns: ``p * n_tests < alpha``.

    The adjusted p-value the audit stored is used when present (the gate decides on it).
    """
    if row.p_value_adjusted is not None:
        return row.p_value_adjusted < alpha
    return row.p_value is not None and row.p_value * max(n_tests, 1) < alpha


# ------------------------------------------------------------------------ formatting
def _nonfinite(x: float) -> str | None:
    return None if math.isfinite(x) else str(x)


def fmt_auc(x: float | None) -> str:
    """AUCs with three decimals: the noise floor rarely supports more."""
    if x is None:
        return "n/a"
    return _nonfinite(x) or f"{x:.3f}"


def fmt_float(x: float | None, digits: int = 3) -> str:
    """A plain number, fixed decimals."""
    if x is None:
        return "n/a"
    return _nonfinite(x) or f"{x:.{digits}f}"


def _fmt_small(x: float | None, *, below: float, small: str, large: str) -> str:
    """Scientific notation under ``below`` so tiny values do not read as 0."""
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    if x == 0.0:
        return "0"
    return format(x, small if abs(x) < below else large)


def fmt_p(x: float | None) -> str:
    """p-values: scientific notation when small, so tiny values do not read as 0."""
    return _fmt_small(x, below=1e-3, small=".1e", large=".3f")


def fmt_rate(x: float | None) -> str:
    """Rates such as TPR at low FPR, which are often far below 1%."""
    return _fmt_small(x, below=1e-2, small=".2e", large=".3f")


def fmt_int(x: int | None) -> str:
    """Counts with thousands separators."""
    return "n/a" if x is None else f"{x:,}"


def fmt_percent(x: float | None, *, signed: bool = False, digits: int = 1) -> str:
    """A fraction as a percentage."""
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    sign = "+" if signed else ""
    return f"{x * 100:{sign}.{digits}f}%"


def fmt_fpr(key: str) -> str:
    """An FPR key such as ``"0.001"`` as ``0.1%``."""
    x = as_float(_parse_number(key))
    return key if x is None else f"{x * 100:g}%"


def fmt_value(value: object) -> str:
    """A violation's value or limit, whatever JSON type it has."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return fmt_int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0.0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        # Per-FPR rules give {"0.001": 0.05}: read as "at FPR 0.001: 0.0533".
        return "; ".join(f"at {k}: {fmt_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(fmt_value(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def _parse_number(key: str) -> float | None:
    try:
        return float(key)
    except ValueError:
        return None


def _sorted_numeric_keys(keys: Iterable[str]) -> list[str]:
    """Keys such as ``"0.6"`` in numeric order; non-numeric keys last, as given."""
    parsed = [(k, _parse_number(k)) for k in keys]
    numeric = sorted((x, k) for k, x in parsed if x is not None)
    return [k for _, k in numeric] + [k for k, x in parsed if x is None]


# ---------------------------------------------------------------------- content model
@dataclass(frozen=True)
class Strong:
    """Emphasised text."""

    text: str


@dataclass(frozen=True)
class Code:
    """An identifier (rule, attack or patient key), shown verbatim."""

    text: str


Span = str | Strong | Code
Text = tuple[Span, ...]


@dataclass(frozen=True)
class Paragraph:
    text: Text


@dataclass(frozen=True)
class Bullets:
    items: tuple[Text, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Span, ...], ...]
    numeric: tuple[bool, ...]
    """Per column: right-align (numbers)."""


@dataclass(frozen=True)
class Image:
    name: str
    caption: str
    source: str
    """Relative file name (Markdown) or file path (HTML, embedded)."""


@dataclass(frozen=True)
class Verdict:
    status: str
    """``pass``, ``fail``, ``error`` or whatever unexpected status the report holds."""
    headline: Text
    items: tuple[Text, ...]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int


@dataclass(frozen=True)
class CodeBlock:
    """Verbatim lines (a config or code change to apply)."""

    text: str
    language: str = ""


Block = Paragraph | Bullets | Table | Image | Verdict | Heading | CodeBlock


@dataclass(frozen=True)
class Document:
    title: str
    blocks: tuple[Block, ...]


# ------------------------------------------------------------------ content building
def build_document(report: Mapping[str, Any], figures: Mapping[str, str]) -> Document:
    """The report's content, verdict first, as renderer-neutral blocks.

    Args:
        report: The JSON report dict.
        figures: Figure name (see :data:`FIGURE_ORDER`) to image source.
    """
    blocks: list[Block] = [_verdict(report)]
    blocks += _key_figures(report)
    blocks += _figures(figures)
    blocks += _aggregate(report)
    blocks += _tail(report)
    blocks += _subgroups(report)
    blocks += _top_patients(report)
    blocks += _dp_training(report)
    blocks += _dp_recommendation(report)
    blocks += _caveats(report)
    blocks += _provenance(report)
    blocks += [Heading("Reference", 2), Paragraph((CITATION,))]
    return Document(title="Privacy audit: membership-inference risk", blocks=tuple(blocks))


def _verdict(report: Mapping[str, Any]) -> Verdict:
    decision = as_mapping(report.get("decision"))
    status = as_str(decision.get("status"), "error").lower()
    violations = [as_mapping(v) for v in as_list(decision.get("violations"))]
    label = Strong(f"Verdict: {status.upper()}")
    if status == "pass":
        headline: Text = (label, " — the model meets every rule of the audit policy.")
    elif status == "fail":
        n = len(violations)
        headline = (
            label,
            f" — {n} rule{'s' if n != 1 else ''} of the audit policy "
            f"{'are' if n != 1 else 'is'} violated; the model must not be released as is.",
        )
    elif status == "error":
        headline = (label, " — the audit could not be evaluated; the gate fails closed.")
    else:
        headline = (label, " — unknown decision status; treat as not released.")
    items = tuple(
        (
            as_str(v.get("message"), "(no message)"),
            f" (value {fmt_value(v.get('value'))}, limit {fmt_value(v.get('limit'))}; rule ",
            Code(as_str(v.get("rule"), "?")),
            ")",
        )
        for v in violations
    )
    return Verdict(status=status, headline=headline, items=items)


def _key_figures(report: Mapping[str, Any]) -> list[Block]:
    audit = as_mapping(report.get("audit"))
    summary = as_mapping(report.get("summary"))
    patient_auc = as_mapping(summary.get("patient_auc"))
    record_auc = as_mapping(summary.get("record_auc"))
    floor = as_mapping(summary.get("noise_floor"))
    threshold = as_float(summary.get("at_risk_auc"))
    fdr = as_float(summary.get("fdr"))
    method = as_str(floor.get("method"), "n/a")
    replicates = as_int(floor.get("replicates"))
    method_note = f"{method}, {replicates:,} replicates" if replicates is not None else method
    reason = as_str(floor.get("reason"))
    if reason:
        method_note = f"{method_note}; {reason}"
    rows: list[tuple[Span, ...]] = [
        ("Reference models (K)", fmt_int(as_int(audit.get("reference_models")))),
        ("Records", fmt_int(as_int(audit.get("records")))),
        ("Patients", fmt_int(as_int(audit.get("patients")))),
        ("Worst patient AUC", fmt_auc(as_float(patient_auc.get("max")))),
        ("Median patient AUC", fmt_auc(as_float(patient_auc.get("median")))),
        ("99th percentile of patient AUC", fmt_auc(as_float(patient_auc.get("q99")))),
        ("Worst record AUC", fmt_auc(as_float(record_auc.get("max")))),
        (
            f"Patients confidently at risk (AUC above {fmt_auc(threshold)}, "
            f"FDR {fmt_float(fdr, 2)})",
            fmt_int(as_int(summary.get("patients_at_risk"))),
        ),
        (
            f"Patients with AUC above {fmt_auc(threshold)} (point estimate, untested)",
            fmt_int(as_int(summary.get("patients_at_risk_raw"))),
        ),
        (
            "Share of patients confidently at risk",
            fmt_percent(as_float(summary.get("fraction_at_risk")), digits=2),
        ),
        (
            f"Noise floor: 95% null maximum patient AUC ({method_note})",
            fmt_auc(as_float(floor.get("max_patient_auc_q95"))),
        ),
        (
            "Patients expected above the at-risk AUC from noise alone",
            fmt_float(as_float(floor.get("expected_at_risk")), 2),
        ),
        (
            "Reference models needed for the noise floor to sit below the limits",
            fmt_int(as_int(floor.get("reference_models_needed"))),
        ),
    ]
    power = as_mapping(summary.get("power"))
    if power:
        level = as_float(power.get("power"))
        rows.append(
            (
                f"Smallest record AUC the at-risk test finds with "
                f"{fmt_percent(level, digits=0)} power at this K",
                fmt_auc(as_float(power.get("detectable_auc"))),
            )
        )
        rows.append(
            (
                "Reference models the policy's power rules need",
                fmt_int(as_int(power.get("reference_models_needed"))),
            )
        )
    aggregate = as_mapping(report.get("aggregate"))
    strongest = as_str(aggregate.get("strongest"))
    attack = as_mapping(as_mapping(aggregate.get("attacks")).get(strongest))
    if attack:
        rows.append(("Strongest aggregate attack", Code(strongest)))
        rows.append(("Strongest attack AUC", fmt_auc(as_float(attack.get("auc")))))
        tpr = as_mapping(attack.get("tpr_at_fpr"))
        for key in _sorted_numeric_keys(tpr):
            rows.append(
                (f"Strongest attack TPR at FPR {fmt_fpr(key)}", fmt_rate(as_float(tpr[key])))
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


def _aggregate(report: Mapping[str, Any]) -> list[Block]:
    aggregate = as_mapping(report.get("aggregate"))
    attacks = as_mapping(aggregate.get("attacks"))
    if not attacks:
        return []
    strongest = as_str(aggregate.get("strongest"))
    fpr_keys = _sorted_numeric_keys(
        {k for a in attacks.values() for k in as_mapping(as_mapping(a).get("tpr_at_fpr"))}
    )
    rows: list[tuple[Span, ...]] = []
    for name, entry in attacks.items():
        a = as_mapping(entry)
        tpr = as_mapping(a.get("tpr_at_fpr"))
        label: Span = Code(str(name))
        rows.append(
            (
                label,
                fmt_auc(as_float(a.get("auc"))),
                *(fmt_rate(as_float(tpr.get(k))) for k in fpr_keys),
                "strongest, gated" if name == strongest else "",
            )
        )
    header = ("Attack", "AUC", *(f"TPR at FPR {fmt_fpr(k)}" for k in fpr_keys), "Note")
    return [
        Heading("Aggregate attacks on the release candidate", 2),
        Paragraph(
            (
                f"Members: {fmt_int(as_int(aggregate.get('members')))}; "
                f"non-members: {fmt_int(as_int(aggregate.get('non_members')))}. "
                "An aggregate AUC near 0.5 does not mean every patient is safe: "
                "the patient-level figures above show the exposed tail.",
            )
        ),
        Table(header, tuple(rows), (False, True, *(True for _ in fpr_keys), False)),
    ]


def _tail(report: Mapping[str, Any]) -> list[Block]:
    summary = as_mapping(report.get("summary"))
    counts = as_mapping(summary.get("tail_counts"))
    patients = as_int(as_mapping(report.get("audit")).get("patients"))
    blocks: list[Block] = []
    if counts:
        rows: list[tuple[Span, ...]] = []
        for key in _sorted_numeric_keys(counts):
            count = as_int(counts[key])
            share = count / patients if count is not None and patients else None
            rows.append((f"≥ {key}", fmt_int(count), fmt_percent(share, digits=2)))
        blocks += [
            Heading("Exposed tail", 2),
            Table(
                ("Patient AUC", "Patients", "Share of patients"), tuple(rows), (False, True, True)
            ),
        ]
    tail = as_mapping(summary.get("tail"))
    if tail:
        if not blocks:
            blocks.append(Heading("Exposed tail", 2))
        blocks.append(
            Paragraph(
                (
                    "Patient tail for the subgroup analysis: the "
                    f"{fmt_patients(as_int(tail.get('patients')))} with patient AUC at least "
                    f"{fmt_auc(as_float(tail.get('threshold')))} (top "
                    f"{fmt_int(as_int(tail.get('target')))} above the "
                    f"{fmt_percent(as_float(tail.get('quantile')), digits=1)} quantile, "
                    "ties at the boundary included).",
                )
            )
        )
    return blocks


def fmt_patients(n: int | None) -> str:
    """``"1 patient"``, ``"12 patients"``."""
    return f"{fmt_int(n)} patient{'' if n == 1 else 's'}"


def _subgroups(report: Mapping[str, Any]) -> list[Block]:
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


def _top_patients(report: Mapping[str, Any]) -> list[Block]:
    top = [as_mapping(p) for p in as_list(as_mapping(report.get("summary")).get("top_patients"))]
    if not top:
        return []
    raw = as_str(as_mapping(report.get("audit")).get("pseudonyms")) == "raw"
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
    rows = tuple(
        (
            str(rank),
            Code(as_str(p.get("patient_key"), "?")),
            fmt_int(as_int(p.get("n_records"))),
            fmt_auc(as_float(p.get("auc_max"))),
            fmt_auc(as_float(p.get("auc_mean"))),
            fmt_float(as_float(p.get("auc_se"))),
        )
        for rank, p in enumerate(top, start=1)
    )
    return [
        Heading("Most exposed patients", 2),
        Paragraph(note),
        Table(
            ("Rank", "Patient key", "Records", "Max AUC", "Mean AUC", "SE"),
            rows,
            (True, False, True, True, True, True),
        ),
    ]


def _caveats(report: Mapping[str, Any]) -> list[Block]:
    audit = as_mapping(report.get("audit"))
    summary = as_mapping(report.get("summary"))
    floor = as_mapping(summary.get("noise_floor"))
    k = as_int(audit.get("reference_models"))
    threshold = as_float(summary.get("at_risk_auc"))
    if threshold is None:
        risk = as_mapping(as_mapping(audit.get("config")).get("risk"))
        threshold = as_float(risk.get("at_risk_auc"))
    q95 = as_float(floor.get("max_patient_auc_q95"))
    needed = as_int(floor.get("reference_models_needed"))
    power = (
        f"Statistical power: {fmt_int(k)} reference models. With no leakage at all, noise "
        f"alone would push the highest patient AUC to {fmt_auc(q95)} (95th percentile of "
        f"the null maximum), against an at-risk AUC of {fmt_auc(threshold)}. "
    )
    if q95 is not None and threshold is not None and q95 >= threshold:
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
        if minimum is not None
        else "Small groups are not tested and their figures are suppressed. "
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
    for warning in as_list(as_mapping(report.get("decision")).get("warnings")):
        items.append(("Warning: ", str(warning)))
    return [Heading("Caveats", 2), Bullets(tuple(items))]


def _dp_training(report: Mapping[str, Any]) -> list[Block]:
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


def _dp_recommendation(report: Mapping[str, Any]) -> list[Block]:
    rec = recommendation(report)
    status = rec.get("status")
    if status in (None, "not_needed"):
        return []
    heading = Heading("Remedy: retrain with DP-SGD", 2)
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


def _provenance(report: Mapping[str, Any]) -> list[Block]:
    audit = as_mapping(report.get("audit"))
    inputs = as_mapping(audit.get("inputs"))
    target = audit.get("target")
    rows: tuple[tuple[Span, ...], ...] = (
        ("Report schema", as_str(report.get("schema_version"), "n/a")),
        ("privacy-gate version", as_str(audit.get("package_version"), "n/a")),
        ("Created", as_str(audit.get("created_at"), "n/a")),
        (
            "Release candidate attacked",
            "n/a" if not isinstance(target, bool) else ("yes" if target else "no"),
        ),
        ("Patient identifiers", as_str(audit.get("pseudonyms"), "n/a")),
        ("Signals SHA-256", Code(as_str(inputs.get("signals_sha256"), "n/a"))),
        ("Records SHA-256", Code(as_str(inputs.get("records_sha256"), "n/a"))),
        ("Policy SHA-256", Code(as_str(audit.get("policy_sha256"), "n/a"))),
    )
    return [Heading("Audit provenance", 2), Table(("Item", "Value"), rows, (False, False))]


# ------------------------------------------------------------------ Markdown output
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~$&])")
_MD_LINE_START = re.compile(r"^(\s*)([#+\-=>]|\d+[.)])")


def escape_markdown(text: str) -> str:
    """Backslash-escape characters that Markdown (GFM) would interpret.

    Newlines become spaces, so a string cannot open a new block (heading, list, table).
    """
    text = " ".join(text.splitlines())
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_block_start(text: str) -> str:
    """Escape a leading marker that would turn a paragraph or list item into another block."""
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), text, count=1)


def _md_code(text: str, *, in_table: bool) -> str:
    text = " ".join(text.splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    out = f"{fence}{pad}{text}{pad}{fence}"
    return out.replace("|", "\\|") if in_table else out


def _md_span(span: Span, *, in_table: bool = False) -> str:
    if isinstance(span, Strong):
        return f"**{escape_markdown(span.text)}**"
    if isinstance(span, Code):
        return _md_code(span.text, in_table=in_table)
    return escape_markdown(span)


def _md_text(text: Text) -> str:
    return _md_block_start("".join(_md_span(s) for s in text))


def _md_link_target(source: str) -> str:
    if re.search(r"[\s()<>]", source):
        return "<" + source.replace("<", "%3C").replace(">", "%3E") + ">"
    return source


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {escape_markdown(block.text)}"
    if isinstance(block, Paragraph):
        return _md_text(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_text(item)}" for item in block.items)
    if isinstance(block, Verdict):
        lines = [_md_text(block.headline)]
        if block.items:
            lines.append("")
            lines += [f"- {_md_text(item)}" for item in block.items]
        return "\n".join(lines)
    if isinstance(block, CodeBlock):
        longest = max((len(run) for run in re.findall(r"`+", block.text)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"{fence}{block.language}\n{block.text}\n{fence}"
    if isinstance(block, Image):
        alt = escape_markdown(block.name.replace("_", " "))
        return f"![{alt}]({_md_link_target(block.source)})\n\n*{escape_markdown(block.caption)}*"
    return _md_table(block)


def _md_table(table: Table) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    header = row([escape_markdown(h) or " " for h in table.header])
    rule = row(["---:" if n else "---" for n in table.numeric])
    body = [row([_md_span(c, in_table=True) for c in r]) for r in table.rows]
    return "\n".join([header, rule, *body])


def render_markdown(report: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """The audit report as Markdown, verdict first, for a privacy officer or a CI summary.

    Args:
        report: The JSON report dict (the content of ``report.json``).
        plots: Figure name to image file name relative to the Markdown file, as returned
            by :func:`~privacy_gate.render.render_plots` (use ``path.name``).

    Returns:
        The Markdown text, ending with a newline.
    """
    document = build_document(report, dict(plots or {}))
    parts = [f"# {escape_markdown(document.title)}"]
    parts += [_md_block(b) for b in document.blocks]
    return "\n\n".join(parts) + "\n"
