"""GitHub Actions mode: a job summary, workflow-command annotations and step outputs.

One job: turn the outcome of a gate run (a report with its decision, the reasons an
audit was not accepted, or an error) into what GitHub shows. The functions that build
text are pure; `write_github` appends the summary to ``$GITHUB_STEP_SUMMARY``, the
outputs to ``$GITHUB_OUTPUT`` (never overwriting either) and prints the annotations.

Per-patient outputs are membership evidence (DESIGN.md, "Pseudonyms"): only the keyed
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from privacy_gate.gate import Decision, Status
from privacy_gate.render.formatting import (
    fmt_auc,
    fmt_float,
    fmt_fpr,
    fmt_int,
    fmt_p,
    fmt_percent,
    fmt_rate,
    fmt_value,
)
from privacy_gate.render.markdown import escape_markdown
from privacy_gate.render.recommendation import (
    recommendation,
    recommendation_lines,
    recommendation_rows,
)
from privacy_gate.render.view import (
    as_float,
    as_int,
    as_list,
    as_mapping,
    as_str,
    is_significant,
    is_suppressed,
    min_group_size,
    subgroup_alpha,
    subgroup_rows,
)
from privacy_gate.render.view import tested_rows as _tested_rows

__all__ = [
    "ACTIONS_VARIABLE",
    "OUTPUT_NAMES",
    "OUTPUT_VARIABLE",
    "SUMMARY_VARIABLE",
    "Outcome",
    "annotation_lines",
    "enabled",
    "escape_data",
    "escape_property",
    "evaluated_report",
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
OUTPUT_NAMES = ("status", "patient_auc_max", "patients_at_risk", "report_path", "violations")
"""Step outputs, always all written (empty when unknown)."""
TOP_PATIENTS = 10
"""Rows of the most-exposed-patients table in the summary."""

_PSEUDONYM_SCHEME = "hmac-sha256"
_PATIENT_KEY = re.compile(r"[0-9a-f]{16}")
_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ICONS = {Status.PASS: "✅", Status.FAIL: "❌", Status.ERROR: "⚠️"}
_APPLY_LANGUAGE = {"lightning": "python", "opacus": "python", "audit_yaml": "yaml"}
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
        report: the report with the decision as evaluated (see `evaluated_report`);
            None when there is none to show (an error, or an audit not accepted).
        refusals: why the audit itself was not accepted (missing, unsigned, stale); a
            non-empty list means ``status`` is fail whatever the report says.
        error: the error message when ``status`` is error.
        report_path: where the report is (a file, or an MLflow artifact URI).
        source: where the audit came from, in words (e.g. ``MLflow run 1a2b...``).
        signature: how the report's signature was checked, in words (None: not checked).
    """

    status: Status
    report: Mapping[str, Any] | None = None
    refusals: tuple[str, ...] = ()
    error: str | None = None
    report_path: str | None = None
    source: str | None = None
    signature: str | None = None


def evaluated_report(report: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """A copy of ``report`` whose decision (and confident at-risk count) is ``decision``'s.

    ``check`` re-evaluates the gate, possibly at another FDR, so the stored decision and
    count may be stale; the input is not changed.
    """
    evaluated = dict(report)
    evaluated["decision"] = decision.to_dict()
    summary = report.get("summary")
    if decision.patients_at_risk is not None and isinstance(summary, Mapping):
        patients = as_int(as_mapping(report.get("audit")).get("patients"))
        evaluated["summary"] = {
            **summary,
            "patients_at_risk": decision.patients_at_risk,
            "fraction_at_risk": (decision.patients_at_risk / patients if patients else None),
        }
    return evaluated


def _violations(outcome: Outcome) -> list[Mapping[str, Any]]:
    decision = as_mapping(as_mapping(outcome.report).get("decision"))
    return [as_mapping(v) for v in as_list(decision.get("violations"))]


def _warnings(outcome: Outcome) -> list[str]:
    decision = as_mapping(as_mapping(outcome.report).get("decision"))
    return [str(w) for w in as_list(decision.get("warnings"))]


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
        message = (
            f"{as_str(v.get('message'), '(no message)')} (value {fmt_value(v.get('value'))}, "
            f"limit {fmt_value(v.get('limit'))})"
        )
        rule = as_str(v.get("rule"), "?")
        lines.append(workflow_command("error", message, title=f"privacy-gate: {rule}"))
    for warning in _warnings(outcome):
        lines.append(workflow_command("warning", warning, title="privacy-gate: caveat"))
    if outcome.status is Status.PASS:
        summary = as_mapping(as_mapping(outcome.report).get("summary"))
        worst = fmt_auc(as_float(as_mapping(summary.get("patient_auc")).get("max")))
        at_risk = fmt_int(as_int(summary.get("patients_at_risk")))
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


def output_values(outcome: Outcome) -> dict[str, str]:
    """The step outputs (`OUTPUT_NAMES`); a figure that is unknown is empty."""
    summary = as_mapping(as_mapping(outcome.report).get("summary"))
    at_risk = as_int(summary.get("patients_at_risk"))
    return {
        "status": outcome.status.value,
        "patient_auc_max": _number(as_float(as_mapping(summary.get("patient_auc")).get("max"))),
        "patients_at_risk": "" if at_risk is None else str(at_risk),
        "report_path": outcome.report_path or "",
        "violations": ",".join(
            dict.fromkeys(as_str(v.get("rule"), "?") for v in _violations(outcome))
        ),
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
def _code(text: str) -> str:
    """An inline code span that survives any backticks and pipes (table cells)."""
    text = " ".join(text.splitlines())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A GFM table; cells are Markdown already (escape text with `escape_markdown`)."""
    lines = [
        "| " + " | ".join(escape_markdown(h) for h in header) + " |",
        "| " + " | ".join("---:" if n else "---" for n in numeric) + " |",
    ]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(outcome: Outcome) -> list[str]:
    status = outcome.status
    title = f"## privacy-gate: {_ICONS[status]} {status.value.upper()}"
    if status is Status.ERROR:
        lines = [
            title,
            "The audit could not be evaluated; the gate fails closed and this check fails.",
            f"**Error:** {escape_markdown(outcome.error or 'unknown error')}",
        ]
    elif outcome.refusals:
        lines = [
            title,
            "The audit was **not accepted**, so the gate fails closed: a missing, unsigned, "
            "forged or stale audit never passes.",
            "\n".join(f"- {escape_markdown(reason)}" for reason in outcome.refusals),
        ]
    elif status is Status.PASS:
        lines = [title, "The model meets every rule of the audit policy."]
    else:
        violations = _violations(outcome)
        n = len(violations)
        lines = [
            title,
            f"{n} rule{'s' if n != 1 else ''} of the audit policy "
            f"{'are' if n != 1 else 'is'} violated; the model must not be released as is.",
            _table(
                ("Rule", "Value", "Limit", "Why"),
                (
                    (
                        _code(as_str(v.get("rule"), "?")),
                        escape_markdown(fmt_value(v.get("value"))),
                        escape_markdown(fmt_value(v.get("limit"))),
                        escape_markdown(as_str(v.get("message"), "(no message)")),
                    )
                    for v in violations
                ),
                (False, True, True, False),
            ),
        ]
    where = []
    if outcome.source:
        where.append(f"Audit: {escape_markdown(outcome.source)}.")
    if outcome.report_path:
        where.append(f"Report: {_code(outcome.report_path)}.")
    if outcome.signature:
        where.append(f"Signature: {escape_markdown(outcome.signature)}.")
    if where:
        lines.append(" ".join(where))
    return lines


def _key_figures(report: Mapping[str, Any]) -> list[str]:
    audit = as_mapping(report.get("audit"))
    summary = as_mapping(report.get("summary"))
    patient_auc = as_mapping(summary.get("patient_auc"))
    floor = as_mapping(summary.get("noise_floor"))
    threshold = fmt_auc(as_float(summary.get("at_risk_auc")))
    at_risk = as_int(summary.get("patients_at_risk"))
    share = fmt_percent(as_float(summary.get("fraction_at_risk")), digits=2)
    rows: list[tuple[str, str]] = [  # plain text, escaped below
        ("Reference models (K)", fmt_int(as_int(audit.get("reference_models")))),
        ("Records", fmt_int(as_int(audit.get("records")))),
        ("Patients", fmt_int(as_int(audit.get("patients")))),
        ("Worst patient AUC", fmt_auc(as_float(patient_auc.get("max")))),
        ("Median patient AUC", fmt_auc(as_float(patient_auc.get("median")))),
        (
            f"Patients confidently at risk (AUC above {threshold}, "
            f"FDR {fmt_float(as_float(summary.get('fdr')), 2)})",
            f"{fmt_int(at_risk)} ({share})",
        ),
        (
            f"Patients with AUC above {threshold} (point estimate)",
            fmt_int(as_int(summary.get("patients_at_risk_raw"))),
        ),
        (
            "Noise floor (95% null maximum patient AUC)",
            fmt_auc(as_float(floor.get("max_patient_auc_q95"))),
        ),
    ]
    cells = [(escape_markdown(k), escape_markdown(v)) for k, v in rows]
    aggregate = as_mapping(report.get("aggregate"))
    strongest = as_str(aggregate.get("strongest"))
    attack = as_mapping(as_mapping(aggregate.get("attacks")).get(strongest))
    label = "Strongest attack on the release candidate"
    if attack:
        tpr = as_mapping(attack.get("tpr_at_fpr"))
        figures = [f"AUC {fmt_auc(as_float(attack.get('auc')))}"] + [
            f"TPR {fmt_rate(as_float(tpr[k]))} at FPR {fmt_fpr(k)}"
            for k in sorted(tpr, key=lambda k: _to_float(k) or 0.0)
        ]
        cells.append((label, f"{_code(strongest)}: {escape_markdown('; '.join(figures))}"))
    else:
        cells.append((label, "not run (no release-candidate signals)"))
    policy = as_str(audit.get("policy_sha256"))
    if policy:
        cells.append(("Policy SHA-256", _code(policy)))
    return ["### Key figures", _table(("Quantity", "Value"), cells, (False, True))]


def _to_float(key: str) -> float | None:
    try:
        return float(key)
    except ValueError:
        return None


def _subgroups(report: Mapping[str, Any]) -> list[str]:
    rows = subgroup_rows(report)
    if not rows:
        return ["### Subgroups", "No subgroup columns were analysed."]
    minimum = min_group_size(report)
    n_tests = len(_tested_rows(report))
    alpha = subgroup_alpha(report)
    suppressed = (
        f"suppressed (< {minimum} patients)" if minimum is not None else "suppressed (too small)"
    )
    cells: list[tuple[str, ...]] = []
    for r in rows:
        name = (escape_markdown(r.column), escape_markdown(r.value))
        if is_suppressed(r, minimum):
            cells.append((*name, "—", "—", "—", "—", "—", "—", suppressed))
            continue
        if r.status == "tested":
            status = "**significant**" if is_significant(r, n_tests, alpha) else "tested"
        elif r.status == "missing":
            status = "missing values (not tested)"
        elif r.status == "several_values":
            status = "patients with several values (not tested)"
        else:
            status = escape_markdown(r.status)
        cells.append(
            (
                *name,
                fmt_int(r.size),
                fmt_int(r.observed),
                fmt_float(r.expected, 1),
                escape_markdown(fmt_percent(r.relative_change, signed=True, digits=0)),
                fmt_p(r.p_value),
                fmt_auc(r.max_patient_auc),
                status,
            )
        )
    header = (
        "Column",
        "Value",
        "Patients",
        "In tail",
        "Expected",
        "Relative change",
        "p-value",
        "Max patient AUC",
        "Status",
    )
    note = (
        "Patients of each group in the exposed patient tail against the number expected from "
        f"its share of the tested patients; significant: p × {n_tests} tested groups below the "
        f"policy's subgroup_alpha {alpha:g} (Bonferroni). Small groups are suppressed: their "
        "counts can single out patients."
    )
    numeric = (False, False, True, True, True, True, True, True, False)
    return ["### Subgroups", note, _table(header, cells, numeric)]


def _top_patients(report: Mapping[str, Any]) -> list[str]:
    top = [as_mapping(p) for p in as_list(as_mapping(report.get("summary")).get("top_patients"))]
    heading = "### Most exposed patients"
    if not top:
        return [heading, "The report lists no patients."]
    scheme = as_str(as_mapping(report.get("audit")).get("pseudonyms"))
    if scheme != _PSEUDONYM_SCHEME:
        return [
            heading,
            f"Not shown: the report identifies patients by {escape_markdown(scheme or '?')} "
            "ids, not by keyed pseudonyms, and a job summary must never hold patient ids. "
            "Re-run the audit without --raw-ids.",
        ]
    rows = []
    for rank, p in enumerate(top[:TOP_PATIENTS], start=1):
        key = as_str(p.get("patient_key"))
        rows.append(
            (
                str(rank),
                _code(key) if _PATIENT_KEY.fullmatch(key) else "(not a pseudonym; hidden)",
                fmt_int(as_int(p.get("n_records"))),
                fmt_auc(as_float(p.get("auc_max"))),
                fmt_auc(as_float(p.get("auc_mean"))),
                fmt_float(as_float(p.get("auc_se"))),
            )
        )
    return [
        heading,
        "Patient keys are keyed hashes (HMAC-SHA256, truncated) of the patient ids; only the "
        "auditing pipeline holds the key.",
        _table(
            ("Rank", "Patient key", "Records", "Max AUC", "Mean AUC", "SE"),
            rows,
            (True, False, True, True, True, True),
        ),
    ]


def _fenced(text: str, language: str) -> str:
    longest = max((len(r) for r in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _dp_recommendation(report: Mapping[str, Any]) -> list[str]:
    first = recommendation_lines(report)[0].removeprefix("DP-SGD recommendation: ")
    blocks = ["### DP-SGD recommendation", escape_markdown(first[:1].upper() + first[1:])]
    rows = recommendation_rows(report)
    if rows:
        blocks.append(
            _table(
                ("Setting", "Value"),
                ((escape_markdown(k), escape_markdown(v)) for k, v in rows),
                (False, True),
            )
        )
        apply = recommendation(report).get("apply")
        for target, change in as_mapping(apply).items():
            if isinstance(change, str) and change.strip():
                blocks.append(
                    f"<details><summary>Apply ({escape_markdown(str(target))})</summary>\n\n"
                    f"{_fenced(change, _APPLY_LANGUAGE.get(str(target), ''))}\n\n</details>"
                )
    return blocks


def _caveats(report: Mapping[str, Any]) -> list[str]:
    summary = as_mapping(report.get("summary"))
    floor = as_float(as_mapping(summary.get("noise_floor")).get("max_patient_auc_q95"))
    threshold = as_float(summary.get("at_risk_auc"))
    decision = as_mapping(report.get("decision"))
    items = [escape_markdown(str(w)) for w in as_list(decision.get("warnings"))]
    if floor is not None and threshold is not None and floor >= threshold:
        items.append(
            f"The noise floor ({fmt_auc(floor)}) is at or above the at-risk AUC "
            f"({fmt_auc(threshold)}): high patient AUCs here may be noise; train more "
            "reference models."
        )
    items.append(
        "The audit is an empirical lower bound on membership risk, not a proof of privacy; "
        "only differentially private training gives a formal guarantee."
    )
    return ["### Caveats", "\n".join(f"- {item}" for item in items)]


def summary_markdown(outcome: Outcome) -> str:
    """The job summary: verdict first, then key figures, subgroups, the most exposed
    patients (pseudonymous keys only), the DP-SGD recommendation and caveats.

    An error or an audit that was not accepted gets the verdict and the reasons only:
    the figures of an unverified or stale report answer nothing.
    """
    blocks = _verdict(outcome)
    report = outcome.report
    if report is not None and outcome.status is not Status.ERROR and not outcome.refusals:
        blocks += _key_figures(report)
        blocks += _subgroups(report)
        blocks += _top_patients(report)
        blocks += _dp_recommendation(report)
        blocks += _caveats(report)
    return "\n\n".join(blocks) + "\n\n"


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
