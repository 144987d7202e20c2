"""The comparison of two audits (`privacy_gate.comparison`) as document blocks: in the
candidate's report.md / report.html and job summary under "Against the champion", and
as the page ``privacy-gate diff`` writes."""

from __future__ import annotations

from privacy_gate.comparison import AuditComparison, Change, SubgroupShift
from privacy_gate.render.blocks import Block, Bullets, Code, Document, Heading, Paragraph, Table
from privacy_gate.render.document import PATIENT_KEY
from privacy_gate.render.formatting import fmt_auc, fmt_float, fmt_int, fmt_percent

__all__ = ["MAX_LISTED", "comparison_document", "comparison_lines", "comparison_section"]

MAX_LISTED = 20
"""Patient keys listed per direction (the rest are counted)."""
MAX_SUBGROUP_ROWS = 12
_LINES_LISTED = 5


def _signed(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return "0" if value == 0 else f"{value:+.{digits}f}"


def _count_change(change: Change) -> str:
    value = change.change
    return "n/a" if value is None else ("0" if value == 0 else f"{int(value):+,}")


def _int(value: float | None) -> str:
    return fmt_int(None if value is None else int(value))


def _figures(diff: AuditComparison, before: str, after: str) -> Table:
    rows = (
        (
            "Worst patient AUC",
            fmt_auc(diff.worst_patient_auc.before),
            fmt_auc(diff.worst_patient_auc.after),
            _signed(diff.worst_patient_auc.change),
        ),
        (
            "Patients confidently at risk",
            _int(diff.patients_at_risk.before),
            _int(diff.patients_at_risk.after),
            _count_change(diff.patients_at_risk),
        ),
        (
            "Strongest aggregate attack AUC",
            fmt_auc(diff.aggregate_auc.before),
            fmt_auc(diff.aggregate_auc.after),
            _signed(diff.aggregate_auc.change),
        ),
    )
    return Table(("Figure", before, after, "Change"), rows, (False, True, True, True))


def _publishable(keys: tuple[str, ...]) -> list[str]:
    """The keys that are pseudonyms (raw ids are counted, never listed)."""
    return [k for k in keys if PATIENT_KEY.fullmatch(k)]


def _keys(label: str, keys: tuple[str, ...]) -> list[Block]:
    if not keys:
        return [Paragraph((f"{label}: none.",))]
    shown = _publishable(keys)[:MAX_LISTED]
    rest = len(keys) - len(shown)
    blocks: list[Block] = [Paragraph((f"{label}: {fmt_int(len(keys))} patient(s).",))]
    if shown:
        blocks.append(Bullets(tuple((Code(k),) for k in shown)))
    if rest:
        blocks.append(Paragraph((f"{fmt_int(rest)} more not listed (raw ids never are).",)))
    return blocks


def _patients(diff: AuditComparison) -> list[Block]:
    if not diff.patients_matched:
        return [Paragraph((f"Patients cannot be matched: {diff.unmatched_reason}.",))]
    return [
        *_keys("Newly at risk", diff.newly_at_risk),
        *_keys("No longer at risk", diff.no_longer_at_risk),
        Paragraph((f"At risk in both: {fmt_int(diff.still_at_risk)}.",)),
    ]


def _significance(before: bool, after: bool) -> str:
    if before == after:
        return "yes" if after else "no"
    return "newly" if after else "no longer"


def _points(change: float | None) -> str:
    """A change of a share, in percentage points."""
    return "n/a" if change is None else f"{change * 100:+.1f} pts"


def _subgroups(diff: AuditComparison) -> list[Block]:
    moved = [
        s
        for s in diff.subgroups
        if (s.tail_rate.change or 0) != 0 or s.significant_before != s.significant_after
    ][:MAX_SUBGROUP_ROWS]
    if not moved:
        return [Paragraph(("No tested subgroup's share of the exposed tail changed.",))]
    rows = tuple(
        (
            s.column,
            s.group,
            fmt_percent(s.tail_rate.before),
            fmt_percent(s.tail_rate.after),
            _points(s.tail_rate.change),
            fmt_float(s.relative_change.after, 2),
            _significance(s.significant_before, s.significant_after),
        )
        for s in moved
    )
    header = ("Column", "Group", "Tail share before", "after", "Change", "Rel. change after",
              "Over-represented")  # fmt: skip
    return [
        Paragraph(("Subgroups whose share of the exposed tail moved, largest first:",)),
        Table(header, rows, (False, False, True, True, True, True, False)),
    ]


def comparison_section(
    diff: AuditComparison,
    *,
    before: str = "champion",
    after: str = "candidate",
    heading: str | None = None,
) -> list[Block]:
    """The comparison, under ``heading`` (default "Against the <before>")."""
    digest_name, digest = diff.pool
    return [
        Heading(heading or f"Against the {before}", 2),
        Paragraph(
            (f"Both audits are of the same pool ({digest_name} ", Code(digest[:16]), ")."),
        ),
        _figures(diff, before, after),
        *_patients(diff),
        *_subgroups(diff),
    ]


def comparison_document(diff: AuditComparison, *, before: str, after: str) -> Document:
    """The page ``privacy-gate diff --out`` writes (Markdown and HTML)."""
    return Document(
        title=f"Privacy audit comparison: {after} against {before}",
        blocks=tuple(comparison_section(diff, before=before, after=after, heading="What changed")),
    )


def _figure(name: str, change: Change, *, count: bool = False) -> str:
    def shown(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{int(value):,}" if count else fmt_auc(value)

    delta = change.change
    signed = "" if delta is None else (f" ({int(delta):+,})" if count else f" ({delta:+.3f})")
    return f"  {name:<30} {shown(change.before)} -> {shown(change.after)}{signed}"


def _key_list(keys: tuple[str, ...]) -> str:
    """The count and the first keys (pseudonyms only: raw ids are never listed)."""
    shown = _publishable(keys)
    listed = ", ".join(shown[:_LINES_LISTED]) + (", ..." if len(keys) > _LINES_LISTED else "")
    return f"{len(keys)}" + (f" ({listed})" if shown else "")


def _over_represented(shift: SubgroupShift) -> str:
    if shift.significant_before == shift.significant_after:
        return ""
    return " (now over-represented)" if shift.significant_after else " (no longer over-represented)"


def comparison_lines(diff: AuditComparison, *, before: str, after: str) -> list[str]:
    """The comparison in a few terminal lines."""
    lines = [
        f"privacy-gate diff: {after} against {before} (same pool, {diff.pool[0]} "
        f"{diff.pool[1][:16]})",
        _figure("worst patient AUC", diff.worst_patient_auc),
        _figure("patients confidently at risk", diff.patients_at_risk, count=True),
        _figure("strongest aggregate attack AUC", diff.aggregate_auc),
    ]
    if diff.patients_matched:
        lines.append(
            f"  newly at risk: {_key_list(diff.newly_at_risk)}; no longer at risk: "
            f"{_key_list(diff.no_longer_at_risk)}; at risk in both: {diff.still_at_risk}"
        )
    else:
        lines.append(f"  patients cannot be matched: {diff.unmatched_reason}")
    moved = [s for s in diff.subgroups if (s.tail_rate.change or 0) != 0][:_LINES_LISTED]
    for s in moved:
        lines.append(
            f"  subgroup {s.column}={s.group}: tail share {fmt_percent(s.tail_rate.before)} "
            f"-> {fmt_percent(s.tail_rate.after)}{_over_represented(s)}"
        )
    if not moved:
        lines.append("  no tested subgroup's share of the exposed tail changed")
    return lines
