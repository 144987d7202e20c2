"""GitHub Actions mode: a job summary, workflow-command annotations and step outputs.

One job: turn the outcome of a gate run (a report with its decision, the reasons an
audit was not accepted, or an error) into what GitHub shows. The functions that build
text are pure; `write_github` appends the summary to ``$GITHUB_STEP_SUMMARY``, the
outputs to ``$GITHUB_OUTPUT`` (never overwriting either) and prints the annotations.

Per-patient outputs are membership evidence (docs/reference/report.md, "Pseudonyms"): only the keyed
pseudonyms the report already holds reach the summary, and a report written with raw
ids gets no patient table.

>>> escape_data("50% of\\nrows")
'50%25 of%0Arows'
>>> escape_property("rule: a, b")
'rule%3A a%2C b'
>>> format_outputs({"status": "pass"})
'status=pass\\n'
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from privacy_gate.comparison import AuditComparison
from privacy_gate.gate import Status, Violation
from privacy_gate.render.blocks import Block, Bullets, Code, Heading, Paragraph, Span, Strong, Table
from privacy_gate.render.comparison import comparison_section
from privacy_gate.render.document import summary_sections, violations_sentence
from privacy_gate.render.formatting import (
    fmt_auc,
    fmt_int,
    fmt_value,
)
from privacy_gate.render.markdown import render_blocks
from privacy_gate.report_model import AuditReport

__all__ = [
    "ACTIONS_VARIABLE",
    "OUTPUT_NAMES",
    "OUTPUT_VARIABLE",
    "SUMMARY_VARIABLE",
    "Outcome",
    "annotation_lines",
    "append_summary",
    "enabled",
    "escape_data",
    "escape_property",
    "format_outputs",
    "output_values",
    "summary_markdown",
    "workflow_command",
    "write_github",
]

ACTIONS_VARIABLE = "GITHUB_ACTIONS"
"""``true`` on a GitHub Actions runner: turns the GitHub mode on unless ``--no-github``."""
SUMMARY_VARIABLE = "GITHUB_STEP_SUMMARY"
"""The file the job summary (Markdown) is appended to."""
OUTPUT_VARIABLE = "GITHUB_OUTPUT"
"""The file step outputs are appended to."""
OUTPUT_NAMES = (
    "status",
    "patient_auc_max",
    "patients_at_risk",
    "report_path",
    "violations",
    "patients_at_risk_change",
    "newly_at_risk",
)
"""Step outputs, always all written (empty when unknown; the last two only with a
comparison against the champion, ``newly_at_risk`` only when patients could be matched)."""
TOP_PATIENTS = 10
"""Rows of the most-exposed-patients table in the summary."""

_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ICONS = {Status.PASS: "✅", Status.FAIL: "❌", Status.ERROR: "⚠️"}
_log = logging.getLogger(__name__)

Level = Literal["error", "warning", "notice"]


def enabled(flag: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the GitHub mode is on: the flag when given, else ``GITHUB_ACTIONS=true``.

    >>> enabled(None, {"GITHUB_ACTIONS": "true"}), enabled(False, {"GITHUB_ACTIONS": "true"})
    (True, False)
    """
    if flag is not None:
        return flag
    return (os.environ if environ is None else environ).get(ACTIONS_VARIABLE) == "true"


# ------------------------------------------------------------------ workflow commands
def escape_data(text: str) -> str:
    """Escape a workflow command's message: ``%``, ``\\r`` and ``\\n``."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value: as `escape_data`, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(command: Level, message: str, **properties: str | None) -> str:
    """One ``::command prop=value,...::message`` line (properties that are None left out).

    >>> workflow_command("error", "2 > 1", title="privacy-gate: max_patient_auc")
    '::error title=privacy-gate%3A max_patient_auc::2 > 1'
    """
    props = ",".join(
        f"{name}={escape_property(value)}" for name, value in properties.items() if value
    )
    return f"::{command}{' ' + props if props else ''}::{escape_data(message)}"


# --------------------------------------------------------------------------- outcome
@dataclass(frozen=True)
class Outcome:
    """What one gate run (``score``, ``check`` or ``audit``) concluded.

    Attributes:
        status: pass, fail or error (the exit code follows it).
        report: the report as decided (`privacy_gate.gate.decided`);
            None when there is none to show (an error, or an audit not accepted).
        refusals: why the audit itself was not accepted (missing, unsigned, stale); a
            non-empty list means ``status`` is fail whatever the report says.
        error: the error message when ``status`` is error.
        report_path: where the report is (a file, or an MLflow artifact URI).
        source: where the audit came from, in words (e.g. ``MLflow run 1a2b...``).
        signature: how the report's signature was checked, in words (None: not checked).
        comparison: the audit against the ``against`` alias's (e.g. the champion's); it
            is shown in the summary, after the report's own sections.
    """

    status: Status
    report: AuditReport | None = None
    refusals: tuple[str, ...] = ()
    error: str | None = None
    report_path: str | None = None
    source: str | None = None
    signature: str | None = None
    comparison: AuditComparison | None = None
    against: str = "champion"


def _violations(outcome: Outcome) -> tuple[Violation, ...]:
    return () if outcome.report is None else outcome.report.decision.violations


def _warnings(outcome: Outcome) -> tuple[str, ...]:
    return () if outcome.report is None else outcome.report.decision.warnings


# ----------------------------------------------------------------------- annotations
def annotation_lines(outcome: Outcome) -> list[str]:
    """``::error`` for the error, each refusal and each violated rule; ``::warning`` for
    each caveat; a ``::notice`` with the key figure when the gate passes."""
    lines: list[str] = []
    if outcome.status is Status.ERROR:
        message = outcome.error or "the audit could not be evaluated"
        lines.append(workflow_command("error", message, title="privacy-gate: error"))
    for reason in outcome.refusals:
        lines.append(workflow_command("error", reason, title="privacy-gate: audit not accepted"))
    for v in _violations(outcome):
        message = f"{v.message} (value {fmt_value(v.value)}, limit {fmt_value(v.limit)})"
        lines.append(workflow_command("error", message, title=f"privacy-gate: {v.rule}"))
    for warning in _warnings(outcome):
        lines.append(workflow_command("warning", warning, title="privacy-gate: caveat"))
    if outcome.status is Status.PASS and outcome.report is not None:
        summary = outcome.report.summary
        worst = fmt_auc(summary.patient_auc.max)
        at_risk = fmt_int(summary.patients_at_risk)
        lines.append(
            workflow_command(
                "notice",
                f"PASS: worst patient AUC {worst}, {at_risk} patients confidently at risk.",
                title="privacy-gate",
            )
        )
    return lines


# --------------------------------------------------------------------------- outputs
def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(value)


def _count(value: float | None) -> str:
    return "" if value is None else str(int(value))


def output_values(outcome: Outcome) -> dict[str, str]:
    """The step outputs (`OUTPUT_NAMES`); a figure that is unknown is empty."""
    summary = None if outcome.report is None else outcome.report.summary
    diff = outcome.comparison
    return {
        "status": outcome.status.value,
        "patient_auc_max": _number(None if summary is None else summary.patient_auc.max),
        "patients_at_risk": "" if summary is None else str(summary.patients_at_risk),
        "report_path": outcome.report_path or "",
        "violations": ",".join(dict.fromkeys(v.rule for v in _violations(outcome))),
        "patients_at_risk_change": _count(diff.patients_at_risk.change if diff else None),
        "newly_at_risk": str(len(diff.newly_at_risk)) if diff and diff.patients_matched else "",
    }


def format_outputs(values: Mapping[str, str]) -> str:
    """``name=value`` lines for ``$GITHUB_OUTPUT``; a multi-line value in the heredoc form.

    >>> text = format_outputs({"report_path": "a\\nb"})
    >>> lines = text.splitlines()
    >>> lines[0].startswith("report_path<<ghadelimiter_"), lines[1:3], lines[3] == lines[0][13:]
    (True, ['a', 'b'], True)
    """
    parts: list[str] = []
    for name, value in values.items():
        if not _OUTPUT_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid step output name.")
        if "\n" in value or "\r" in value:
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            while delimiter in value:  # pragma: no cover - a UUID collision
                delimiter = f"ghadelimiter_{uuid.uuid4()}"
            parts.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        else:
            parts.append(f"{name}={value}\n")
    return "".join(parts)


# ----------------------------------------------------------------------- the summary
def _verdict(outcome: Outcome) -> list[Block]:
    """The check's verdict: the outcome (error, audit not accepted, pass, violations) and
    where the audit came from. The rest of the summary is the report's own document."""
    status = outcome.status
    blocks: list[Block] = [Heading(f"privacy-gate: {_ICONS[status]} {status.value.upper()}", 1)]
    if status is Status.ERROR:
        blocks += [
            Paragraph(
                ("The audit could not be evaluated; the gate fails closed and this check fails.",)
            ),
            Paragraph((Strong("Error:"), f" {outcome.error or 'unknown error'}")),
        ]
    elif outcome.refusals:
        blocks += [
            Paragraph(
                (
                    "The audit was ",
                    Strong("not accepted"),
                    ", so the gate fails closed: a missing, unsigned, forged or stale audit "
                    "never passes.",
                )
            ),
            Bullets(tuple((reason,) for reason in outcome.refusals)),
        ]
    elif status is Status.PASS:
        blocks.append(Paragraph(("The model meets every rule of the audit policy.",)))
    else:
        violations = _violations(outcome)
        n = len(violations)
        rows = tuple(
            (Code(v.rule), fmt_value(v.value), fmt_value(v.limit), v.message) for v in violations
        )
        blocks += [
            Paragraph((violations_sentence(n),)),
            Table(("Rule", "Value", "Limit", "Why"), rows, (False, True, True, False)),
        ]
    where: list[list[Span]] = []
    if outcome.source:
        where.append([f"Audit: {outcome.source}."])
    if outcome.report_path:
        where.append(["Report: ", Code(outcome.report_path), "."])
    if outcome.signature:
        where.append([f"Signature: {outcome.signature}."])
    if outcome.report is not None and status is not Status.ERROR:
        where.append(_policy_spans(outcome.report))
    if where:
        spans: list[Span] = []
        for i, part in enumerate(where):
            spans += ([" "] if i else []) + part
        blocks.append(Paragraph(tuple(spans)))
    return blocks


def _policy_spans(report: AuditReport) -> list[Span]:
    """The digest of the policy the decision was evaluated under (the one the console
    printed), and whether it is the audit's own."""
    applied = report.decision.policy_sha256 or report.audit.policy_sha256
    own = applied == report.audit.policy_sha256
    return [
        "Policy SHA-256: ",
        Code(applied),
        " (the audit's own)." if own else f" (not the audit's own, {report.audit.policy_sha256}).",
    ]


def summary_markdown(outcome: Outcome) -> str:
    """The job summary: the verdict, then the report's own sections (key figures,
    subgroups, the most exposed patients under pseudonyms only, the DP-SGD recommendation,
    caveats), rendered from the same document model as report.md and report.html.

    An error or an audit that was not accepted gets the verdict and the reasons only:
    the figures of an unverified or stale report answer nothing.
    """
    blocks = _verdict(outcome)
    report = outcome.report
    if report is not None and outcome.status is not Status.ERROR and not outcome.refusals:
        blocks += summary_sections(report, top_patients=TOP_PATIENTS)
        if outcome.comparison is not None:
            blocks += comparison_section(outcome.comparison, before=outcome.against)
    return render_blocks(blocks, heading_offset=1) + "\n"


def append_summary(markdown: str, *, environ: Mapping[str, str] | None = None) -> None:
    """Append Markdown to the job summary (``privacy-gate diff`` in GitHub mode)."""
    env = os.environ if environ is None else environ
    _append(env.get(SUMMARY_VARIABLE), markdown + "\n", SUMMARY_VARIABLE, "job summary")


# ---------------------------------------------------------------------------- writer
def _append(path: str | None, text: str, variable: str, what: str) -> None:
    if not path:
        _log.warning("GitHub mode: $%s is not set; skipping the %s.", variable, what)
        return
    with Path(path).open("a", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_github(
    outcome: Outcome,
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print the annotations and append the summary and the outputs to GitHub's files.

    Args:
        outcome: what the gate run concluded.
        environ: where ``GITHUB_STEP_SUMMARY`` and ``GITHUB_OUTPUT`` are read
            (``os.environ`` when None); an unset one is skipped with a logged warning.
        stream: where the annotations go (standard output when None).

    Raises:
        OSError: a summary or output file cannot be written.
    """
    env = os.environ if environ is None else environ
    out = sys.stdout if stream is None else stream
    for line in annotation_lines(outcome):
        print(line, file=out)
    out.flush()
    _append(env.get(SUMMARY_VARIABLE), summary_markdown(outcome), SUMMARY_VARIABLE, "job summary")
    _append(
        env.get(OUTPUT_VARIABLE),
        format_outputs(output_values(outcome)),
        OUTPUT_VARIABLE,
        "step outputs",
    )
