"""What the command groups share: output options, the GitHub option, printing a decision and
the summary, the gate outcome."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privacy_gate import github
from privacy_gate.comparison import AuditComparison
from privacy_gate.errors import InputError
from privacy_gate.gate import Decision, Status
from privacy_gate.render.comparison import comparison_section
from privacy_gate.render.formatting import fmt_auc
from privacy_gate.render.recommendation import recommendation_lines
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import PUBLIC_KEY_ENVIRONMENT_VARIABLE, load_public_key

EXIT_ERROR = Status.ERROR.exit_code


GATE_COMMANDS = ("score", "check", "audit")


SKINNY_HINT = "HINT: pip install 'privacy-gate[mlflow-skinny]' (or the full 'mlflow' extra)."


def add_github_option(command: argparse.ArgumentParser, *, default: Any) -> None:
    command.add_argument(
        "--github",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="GitHub Actions mode: job summary, annotations and step outputs (default: on "
        f"when {github.ACTIONS_VARIABLE}=true)",
    )


def add_output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--raw-ids",
        action="store_true",
        help="write raw patient/record ids instead of keyed pseudonyms",
    )
    command.add_argument(
        "--no-plots", action="store_true", help="skip report.md/report.html and the plots"
    )


def print_decision(decision: Decision, report: AuditReport, *, quiet: bool) -> None:
    print(decision.one_line())
    if quiet:
        return
    for violation in decision.violations:
        print(f"  FAIL {violation.rule}: {violation.message}")
    for warning in decision.warnings:
        print(f"  warning: {warning}")
    if decision.status is Status.FAIL:
        for line in recommendation_lines(report):
            print(f"  {line}")


def print_summary(report: AuditReport, out: Path, *, plots: bool) -> None:
    summary, audit = report.summary, report.audit
    print(
        f"{audit.records} records, {audit.patients} patients, "
        f"{audit.reference_models} reference models: max patient AUC "
        f"{fmt_auc(summary.patient_auc.max)} (noise floor "
        f"{summary.noise_floor.max_patient_auc_q95:.3f}), "
        f"{summary.patients_at_risk} confidently at risk. "
        f"Report: {out / ('report.html' if plots else 'report.json')}"
    )


def gate_outcome(
    report: AuditReport,
    *,
    report_path: str,
    source: str | None = None,
    signature: str | None = None,
) -> github.Outcome:
    return github.Outcome(
        status=report.decision.status,
        report=report,
        report_path=report_path,
        source=source,
        signature=signature,
    )


def add_registry_options(command: argparse.ArgumentParser) -> None:
    """The options of the commands that verify a registered model's signed audit."""
    command.add_argument(
        "--public-key",
        type=Path,
        help=f"public key PEM (default: ${PUBLIC_KEY_ENVIRONMENT_VARIABLE})",
    )
    command.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)"
    )
    command.add_argument(
        "--allow-pickle-models",
        action="store_true",
        help="accept a pickle-format model (its forward is code outside its files, which "
        "the audit cannot bind); refused by default",
    )


def registry_client(args: argparse.Namespace, command: str) -> tuple[Any, Any]:
    """(MlflowClient for ``--tracking-uri``, the ``--public-key`` or None); an error naming
    the command where mlflow is not installed."""
    tracking_uri = resolve_tracking_uri(args, command)
    public_key = load_public_key(args.public_key) if args.public_key else None
    from privacy_gate.mlflow.promote import client_for  # imports mlflow lazily

    try:
        return client_for(tracking_uri), public_key
    except ImportError:
        raise InputError(
            f"'privacy-gate {command}' needs the mlflow package. "
            "HINT: pip install 'privacy-gate[mlflow]'."
        ) from None


def resolve_tracking_uri(args: argparse.Namespace, command: str) -> str:
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri or not tracking_uri.strip():
        raise InputError(
            f"The '--tracking-uri' option of {command} must name the MLflow server or store. "
            f"Got {'nothing' if args.tracking_uri is None else repr(args.tracking_uri)}, and "
            "MLFLOW_TRACKING_URI is unset. HINT: pass "
            "--tracking-uri http://host:5000 (or sqlite:///mlflow.db)."
        )
    # a dead server should fail in seconds, not after MLflow's default minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    return tracking_uri


def gate_handler(
    produce: Callable[[argparse.Namespace], github.Outcome],
) -> Callable[[argparse.Namespace], int]:
    """A gate command's handler: its outcome, written for GitHub in GitHub mode, as an
    exit code (0 pass, 1 gate failed)."""

    def handle(args: argparse.Namespace) -> int:
        outcome = produce(args)
        if github.enabled(args.github):
            github.write_github(outcome)
        return outcome.status.exit_code

    return handle


def write_pages(
    out: Path, report: AuditReport, comparison: AuditComparison | None, against: str
) -> None:
    """report.md, report.html and the plots of ``report`` in ``out``, with the comparison
    against ``against`` (the champion) after the key figures when there is one."""
    from privacy_gate.render import render_html, render_markdown, render_plots

    blocks = comparison_section(comparison, before=against) if comparison is not None else []
    images = render_plots(report, out)
    (out / "report.md").write_text(
        render_markdown(report, {k: p.name for k, p in images.items()}, blocks), "utf-8"
    )
    (out / "report.html").write_text(render_html(report, images, blocks), "utf-8")
