"""``privacy-gate diff BEFORE AFTER``: what changed between two audits of the same pool
(e.g. the champion's and a candidate's), by patient and by subgroup."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from privacy_gate import github, signing
from privacy_gate.cli.common import add_github_option
from privacy_gate.comparison import compare_reports, comparison_to_dict
from privacy_gate.errors import InputError, OutdatedReportError, ReportError
from privacy_gate.render.comparison import (
    comparison_document,
    comparison_lines,
    comparison_section,
)
from privacy_gate.render.html import html_page
from privacy_gate.render.markdown import markdown_page, render_blocks
from privacy_gate.report import load_report, read_audit_report
from privacy_gate.report_model import AuditReport
from privacy_gate.verified import verify_signed

__all__ = ["add_diff_command"]


def add_diff_command(commands: Any) -> None:
    diff_cmd = commands.add_parser(
        "diff",
        help="compare two audits of the same pool (e.g. the champion's and a candidate's)",
        description=(
            "Compare two audits of the same pool: the change in worst patient AUC, "
            "confidently-at-risk count and aggregate attack AUC, the patients newly and no "
            "longer at risk (by pseudonymous key: both audits need the same "
            "PRIVACY_GATE_PSEUDONYM_KEY) and the subgroup shifts. Exit 0 when compared, 2 "
            "on an error (audits of different pools included). It decides nothing: the "
            "gate is 'privacy-gate check'."
        ),
    )
    diff_cmd.add_argument("before", type=Path, help="report.json of the earlier audit")
    diff_cmd.add_argument("after", type=Path, help="report.json of the later audit")
    diff_cmd.add_argument(
        "--public-key",
        type=Path,
        help="require both reports to be signed by this Ed25519 public key (PEM)",
    )
    diff_cmd.add_argument(
        "--out", type=Path, help="write comparison.json, comparison.md and comparison.html here"
    )
    add_github_option(diff_cmd, default=argparse.SUPPRESS)
    diff_cmd.set_defaults(handler=run_diff)


def _read(path: Path, which: str, public_key: Any) -> AuditReport:
    where = f"The {which} report {str(path)!r}"
    if not path.is_file():
        raise InputError(
            f"{where} does not exist. HINT: pass two report.json files written by "
            "'privacy-gate audit' or 'score' (or fetched with 'check --out')."
        )
    try:
        report = load_report(path)
    except OutdatedReportError as exc:
        raise InputError(f"{where} cannot be compared: {exc}") from None
    if public_key is not None:
        try:
            return verify_signed(report, public_key).report
        except signing.SignatureError as exc:
            raise InputError(f"{where} is not signed by the given key: {exc}") from None
        except ReportError as exc:
            raise ReportError(f"{where}: {exc}") from None
    return read_audit_report(report, source=where)


def run_diff(args: argparse.Namespace) -> int:
    public_key = signing.load_public_key(args.public_key) if args.public_key else None
    before = _read(args.before, "earlier", public_key)
    after = _read(args.after, "later", public_key)
    diff = compare_reports(before, after)
    before_label, after_label = str(args.before), str(args.after)
    for line in comparison_lines(diff, before=before_label, after=after_label):
        print(line)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        document = comparison_document(diff, before=before_label, after=after_label)
        (args.out / "comparison.json").write_text(
            json.dumps(comparison_to_dict(diff), indent=2, allow_nan=False) + "\n", "utf-8"
        )
        (args.out / "comparison.md").write_text(markdown_page(document), "utf-8")
        (args.out / "comparison.html").write_text(html_page(document), "utf-8")
        if not args.quiet:
            print(f"Wrote {args.out / 'comparison.html'} (.md and .json beside it).")
    if github.enabled(args.github):
        github.append_summary(
            render_blocks(
                comparison_section(diff, before=before_label, after=after_label), heading_offset=1
            )
        )
    return 0
