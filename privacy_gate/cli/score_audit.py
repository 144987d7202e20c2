"""``privacy-gate score`` (signals you bring) and ``privacy-gate audit`` (train reference
models for a PyTorch model from audit.yaml)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privacy_gate import github
from privacy_gate.cli.common import (
    add_github_option,
    add_output_options,
    gate_handler,
    gate_outcome,
    print_decision,
    print_summary,
    write_pages,
)
from privacy_gate.config import default_config
from privacy_gate.errors import InputError
from privacy_gate.gate import Status
from privacy_gate.pipeline import AuditResult, score
from privacy_gate.render.comparison import comparison_lines
from privacy_gate.report import REPORT_FILE

if TYPE_CHECKING:
    from privacy_gate.mlflow.release import ReleaseResult
    from privacy_gate.training.data import AuditData
    from privacy_gate.training.job import AuditJob


def run_audit_job(args: argparse.Namespace) -> tuple[AuditResult, Path, AuditJob, AuditData]:
    try:
        from privacy_gate.training.job import load_data, load_job, run_job
    except ImportError as exc:
        raise InputError(
            f"'privacy-gate audit' trains PyTorch models and needs torch ({exc}). "
            "HINT: pip install 'privacy-gate[torch]'."
        ) from None
    if not args.quiet:  # progress lines with ETA when no terminal shows a bar
        logging.getLogger("privacy_gate.training").setLevel(logging.INFO)
        logging.getLogger("privacy_gate.adaptive").setLevel(logging.INFO)  # looks, rounds
    job = load_job(args.config)
    out = args.out or job.out or Path("out/audit")
    data = load_data(job)
    result = run_job(job, out=out, raw_ids=args.raw_ids, plots=not args.no_plots, data=data)
    if not args.quiet:
        print_summary(result.report, out, plots=not args.no_plots)
    if job.mlflow is not None and job.mlflow.registered_model is None:
        try:
            from privacy_gate.mlflow.logging import log_audit_run
        except ImportError:
            raise InputError(
                "The audit config has an 'mlflow' section but mlflow is not installed. "
                "HINT: pip install 'privacy-gate[mlflow]'."
            ) from None
        run_id = log_audit_run(
            result.report,
            tracking_uri=job.mlflow.tracking_uri,
            experiment=job.mlflow.experiment,
            run_name=job.mlflow.run_name,
            out_dir=out,
        )
        if not args.quiet:
            print(
                f"Logged to MLflow run {run_id} (experiment {job.mlflow.experiment!r}). "
                f"{ui_hint(job.mlflow.tracking_uri)}"
            )
    return result, out, job, data


def _tag_line(tags: Mapping[str, str]) -> str:
    shown = {k: (v if len(v) <= 60 else v[:57] + "...") for k, v in sorted(tags.items())
             if k.startswith("privacy_gate.")}  # fmt: skip
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "none"


def _release(
    args: argparse.Namespace, job: AuditJob, data: AuditData, result: AuditResult, out: Path
) -> ReleaseResult:
    """The release path of an audit.yaml with ``mlflow.registered_model``: log the run
    with the candidate as its model, register a version, ask the gated registry for the
    alias; print what it answered."""
    from privacy_gate.mlflow.release import champion_comparison, release_candidate
    from privacy_gate.training.job import release_model

    target = job.mlflow
    assert target is not None and target.registered_model is not None
    model, example = release_model(job, result.report, out, data)
    comparison, why_not = champion_comparison(
        result.report,
        tracking_uri=target.tracking_uri,
        registry_uri=target.gated_registry_uri,
        registered_model=target.registered_model,
        alias=target.alias,
    )
    if comparison is None:
        if not args.quiet:
            print(f"Nothing to compare with: {why_not}.")
    else:
        if not args.quiet:
            for line in comparison_lines(comparison, before=target.alias, after="this candidate"):
                print(line)
        if not args.no_plots:  # the pages logged with the run show it too
            write_pages(out, result.report, comparison, target.alias)
    released = release_candidate(
        result.report,
        model,
        example,
        tracking_uri=target.tracking_uri,
        registry_uri=target.gated_registry_uri,
        registered_model=target.registered_model,
        alias=target.alias,
        experiment=target.experiment,
        run_name=target.run_name,
        out_dir=out,
        comparison=comparison,
    )
    name, version, alias = released.model_name, released.version, released.alias
    if released.allowed:
        print(f"Promoted {name!r} version {version} to {alias!r}: the registry verified "
              "its signed, passing audit.")  # fmt: skip
    else:
        print(f"Promotion of {name!r} version {version} to {alias!r} REFUSED by the "
              f"registry: {released.refusal}")  # fmt: skip
    if args.quiet:
        return released
    print(f"  {name!r} version {version} (MLflow run {released.run_id}, the candidate "
          f"logged as its model); version tags: {_tag_line(released.tags)}")  # fmt: skip
    print(f"{ui_hint(target.tracking_uri, released.registry_uri)} (Models > {name} > Version "
          f"{version})")  # fmt: skip
    return released


def ui_hint(tracking_uri: str, registry_uri: str | None = None) -> str:
    """How to open the MLflow UI on what the audit wrote: a tracking server's URL, or the
    ``mlflow ui`` command for a local store (a server URI is no ``--backend-store-uri``).

    >>> ui_hint("http://127.0.0.1:5000")
    'Open the UI: http://127.0.0.1:5000'
    >>> ui_hint("sqlite:///out/mlflow.db", "privacygate+sqlite:///out/mlflow.db")
    'Open the UI: mlflow ui --backend-store-uri sqlite:///out/mlflow.db --registry-store-uri privacygate+sqlite:///out/mlflow.db'
    """
    if tracking_uri.startswith(("http://", "https://")):
        return f"Open the UI: {tracking_uri.rstrip('/')}"
    ui = f"mlflow ui --backend-store-uri {tracking_uri}"
    if registry_uri is not None and registry_uri != tracking_uri:
        ui += f" --registry-store-uri {registry_uri}"
    return f"Open the UI: {ui}"


def _score(args: argparse.Namespace) -> github.Outcome:
    if args.config is None and not args.quiet:
        print(
            f"Using the packaged default policy (policy_sha256 "
            f"{default_config().sha256()}); see 'privacy-gate policy'."
        )
    result = score(
        args.signals,
        args.records,
        args.out,
        config_path=args.config,
        raw_ids=args.raw_ids,
        plots=not args.no_plots,
    )
    if not args.quiet:
        print_summary(result.report, args.out, plots=not args.no_plots)
    return _decided(args, result, args.out)


def _audit(args: argparse.Namespace) -> github.Outcome:
    result, out, job, data = run_audit_job(args)
    outcome = _decided(args, result, out)
    if job.mlflow is None or job.mlflow.registered_model is None:
        return outcome
    released = _release(args, job, data, result, out)
    outcome = replace(outcome, comparison=released.comparison, against=released.alias)
    if released.allowed or outcome.status is not Status.PASS:
        return outcome
    # The gate passed, the registry did not (e.g. an unsigned audit): not released.
    refusal = f"the registry refused the promotion: {released.refusal}"
    return replace(outcome, status=Status.FAIL, refusals=(refusal,))


def _decided(args: argparse.Namespace, result: AuditResult, out: Path) -> github.Outcome:
    print_decision(result.decision, result.report, quiet=args.quiet)
    return gate_outcome(result.report, report_path=str(out / REPORT_FILE))


def add_score_command(commands: Any) -> None:
    score_cmd = commands.add_parser("score", help="audit reference-model signals")
    score_cmd.add_argument("--signals", required=True, type=Path, help="signals.npz")
    score_cmd.add_argument("--records", required=True, type=Path, help="records.csv")
    score_cmd.add_argument("--config", type=Path, help="policy YAML (default: packaged policy)")
    score_cmd.add_argument("--out", required=True, type=Path, help="output directory")
    add_output_options(score_cmd)
    add_github_option(score_cmd, default=argparse.SUPPRESS)
    score_cmd.set_defaults(handler=gate_handler(_score))


def add_audit_command(commands: Any) -> None:
    audit_cmd = commands.add_parser(
        "audit", help="train reference models for a PyTorch model and audit it (needs torch)"
    )
    audit_cmd.add_argument("--config", required=True, type=Path, help="audit.yaml")
    audit_cmd.add_argument("--out", type=Path, help="output directory (overrides 'out')")
    add_output_options(audit_cmd)
    add_github_option(audit_cmd, default=argparse.SUPPRESS)
    audit_cmd.set_defaults(handler=gate_handler(_audit))
