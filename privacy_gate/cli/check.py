"""``privacy-gate check``: re-evaluate the gate on a report.json, or on the signed audit of
an MLflow run or registered model version."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from privacy_gate import github, signing
from privacy_gate.cli.common import (
    SKINNY_HINT,
    add_github_option,
    gate_handler,
    gate_outcome,
    print_decision,
    resolve_tracking_uri,
    write_pages,
)
from privacy_gate.comparison import AuditComparison, compare_reports
from privacy_gate.errors import InputError, OutdatedReportError
from privacy_gate.gate import Status
from privacy_gate.mlflow.remedies import remedy_lines
from privacy_gate.pipeline import recheck
from privacy_gate.render.comparison import comparison_lines
from privacy_gate.report import REPORT_FILE, load_report, read_audit_report, write_json
from privacy_gate.report_model import AuditReport, Decision
from privacy_gate.verified import verify_signed

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


_VERSION = re.compile(r"[1-9][0-9]*")
_ALIAS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def add_check_command(commands: Any) -> None:
    check_cmd = commands.add_parser(
        "check",
        help="re-evaluate the gate on a report.json, or on the signed audit in MLflow",
        description=(
            "Re-evaluate the gate.* rules on one audit: a report.json, the signed audit "
            "logged in an MLflow run (--mlflow-run), or that of a registered model version "
            "(--model/--version: also its run and its weights). An MLflow audit that is "
            "missing, unsigned, signed by another key or stale fails (exit 1). MLflow "
            "sources need the mlflow-skinny extra; --model/--version also needs torch."
        ),
    )
    check_cmd.add_argument(
        "report", nargs="?", type=Path, help="report.json written by score or audit"
    )
    check_cmd.add_argument(
        "--config",
        type=Path,
        help="policy YAML whose gate.* rules apply (default: the audit's own policy)",
    )
    check_cmd.add_argument(
        "--mlflow-run", metavar="RUN_ID", help="check the signed audit logged in this run"
    )
    check_cmd.add_argument("--model", help="registered model name (with --version)")
    check_cmd.add_argument("--version", help="registered model version (with --model)")
    check_cmd.add_argument(
        "--public-key",
        type=Path,
        help="public key PEM that must have signed the audit (needed for MLflow sources; "
        f"default: ${signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE}; with a REPORT, requires its "
        "signature)",
    )
    check_cmd.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)"
    )
    check_cmd.add_argument(
        "--out",
        type=Path,
        help="with an MLflow source: write the verified report.json, report.md and "
        "report.html (with the comparison of --against-alias) here",
    )
    check_cmd.add_argument(
        "--against-alias",
        metavar="ALIAS",
        help="MLflow sources: compare with the signed audit of the version that holds ALIAS "
        "(e.g. champion): the change in worst patient, at-risk patients and subgroups, "
        "printed, in the job summary, in report.md/html (--out) and logged as "
        "privacy_gate/vs_<alias>/... metrics of the checked run. It does not change the "
        "verdict; without such a version there is nothing to compare",
    )
    check_cmd.add_argument(
        "--against-model",
        metavar="NAME",
        help="registered model whose ALIAS is compared with (default: --model; needed with "
        "--mlflow-run)",
    )
    add_github_option(check_cmd, default=argparse.SUPPRESS)
    check_cmd.set_defaults(handler=gate_handler(run_check))


def _public_key(args: argparse.Namespace, command: str, *, required: bool) -> Any:
    """The verifiers' key from --public-key or $PRIVACY_GATE_PUBLIC_KEY (None if neither)."""
    variable = signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE
    given = args.public_key
    where = f"The '--public-key' option of {command}" if given else f"${variable}"
    try:
        key = (
            signing.load_public_key(given)
            if given is not None
            else signing.public_key_from_environment()
        )
    except InputError as exc:
        raise InputError(f"{where} names no usable public key: {exc}") from None
    if key is None and required:
        raise InputError(
            f"The '--public-key' option of {command} must name the auditing side's Ed25519 "
            f"public key (PEM) for an audit logged in MLflow. Got nothing, and {variable} is "
            f"unset. HINT: pass --public-key audit_key.pub or set {variable} (CI: the "
            "public key only; the private key stays with the auditing pipeline)."
        )
    return key


def _check_source(args: argparse.Namespace) -> str:
    """Validate check's arguments; which audit it checks: "report", "run" or "model"."""
    given = [
        name
        for name, value in (
            (f"REPORT {str(args.report)!r}", args.report),
            (f"--mlflow-run {args.mlflow_run!r}", args.mlflow_run),
            (f"--model {args.model!r}", args.model),
        )
        if value is not None
    ]
    how = (
        "HINT: privacy-gate check out/report.json, privacy-gate check --mlflow-run RUN_ID, "
        "or privacy-gate check --model NAME --version 3."
    )
    if not given:
        if args.version is not None:
            raise InputError(
                f"The '--version' option of check needs --model. Got --version "
                f"{args.version!r} alone. {how}"
            )
        raise InputError(
            "The 'check' command needs one audit to check: a REPORT path, --mlflow-run or "
            f"--model with --version. Got none. {how}"
        )
    if len(given) > 1:
        raise InputError(
            f"The 'check' command checks one audit at a time. Got {' and '.join(given)}. {how}"
        )
    if args.report is not None:
        if args.version is not None:
            raise InputError(
                f"The '--version' option of check applies only with --model. Got --version "
                f"{args.version!r} with a REPORT. {how}"
            )
        for option, value in (("--tracking-uri", args.tracking_uri), ("--out", args.out)):
            if value is not None:
                raise InputError(
                    f"The '{option}' option of check applies only to an audit in MLflow "
                    f"(--mlflow-run, --model). Got {str(value)!r} with the REPORT "
                    f"{str(args.report)!r}. HINT: drop {option}; check reads a REPORT file "
                    "and writes nothing."
                )
        return "report"
    if args.tracking_uri is not None and not args.tracking_uri.strip():
        raise InputError(
            f"The '--tracking-uri' option of check must name the MLflow server. Got "
            f"{args.tracking_uri!r} instead. HINT: --tracking-uri https://mlflow.example.org."
        )
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(
            f"The '--out' option of check must be a directory. Got {str(args.out)!r}, which "
            "is a file. HINT: name a new or existing directory."
        )
    if args.mlflow_run is not None:
        if args.version is not None:
            raise InputError(
                f"The '--version' option of check applies only with --model. Got --version "
                f"{args.version!r} with --mlflow-run. {how}"
            )
        if not _RUN_ID.fullmatch(args.mlflow_run):
            raise InputError(
                f"The '--mlflow-run' option of check must be an MLflow run id (letters, "
                f"digits, '-' and '_'). Got {args.mlflow_run!r} instead. HINT: copy the run "
                "id from the MLflow UI or from the audit's line 'Logged to MLflow run ...'."
            )
        return "run"
    if not args.model.strip():
        raise InputError(
            f"The '--model' option of check must be a registered model name. Got "
            f"{args.model!r} instead. HINT: --model ehr-mlp --version 3."
        )
    if args.version is None:
        raise InputError(
            f"The '--model' option of check needs --version. Got --model {args.model!r} "
            "without it. HINT: --model NAME --version 3 (the registered model version)."
        )
    if not _VERSION.fullmatch(args.version):
        raise InputError(
            f"The '--version' option of check must be a registered model version (a "
            f"positive integer). Got {args.version!r} instead. HINT: the version number "
            "shown in the MLflow model registry, e.g. --version 3."
        )
    return "model"


def _refused(
    refusals: list[str], *, quiet: bool, report_path: str | None, source: str
) -> github.Outcome:
    print("privacy-gate: FAIL (audit not accepted)")
    if not quiet:
        for reason in refusals:
            print(f"  FAIL audit: {reason}")
        for line in remedy_lines(refusals, None):
            print(line)
    return github.Outcome(
        status=Status.FAIL, refusals=tuple(refusals), report_path=report_path, source=source
    )


def _check_against(args: argparse.Namespace, source: str) -> None:
    """Validate --against-alias and --against-model."""
    if args.against_alias is None:
        if args.against_model is not None:
            raise InputError(
                f"The '--against-model' option of check needs --against-alias. Got "
                f"--against-model {args.against_model!r} alone. HINT: --against-alias champion."
            )
        return
    if source == "report":
        raise InputError(
            f"The '--against-alias' option of check compares audits in MLflow (--mlflow-run, "
            f"--model). Got --against-alias {args.against_alias!r} with the REPORT "
            f"{str(args.report)!r}. HINT: compare two report files with 'privacy-gate diff "
            "CHAMPION.json CANDIDATE.json'."
        )
    if not _ALIAS.fullmatch(args.against_alias):
        raise InputError(
            f"The '--against-alias' option of check must be a registered model alias "
            f"(letters, digits, '_' and '-'). Got {args.against_alias!r} instead. HINT: "
            "--against-alias champion."
        )
    if source == "run" and not (args.against_model or "").strip():
        raise InputError(
            f"The '--against-alias' option of check needs the registered model whose alias "
            f"it compares with: --against-model NAME with --mlflow-run. Got "
            f"{args.against_model!r}. HINT: --against-alias champion --against-model ehr-mlp."
        )


def _against_champion(
    args: argparse.Namespace, client: Any, public_key: Any, candidate: Any, run_id: str
) -> AuditComparison | None:
    """The comparison with the ALIAS's audit; None (said why) when there is none to use."""
    from privacy_gate.mlflow.fetch import verified_alias_report
    from privacy_gate.mlflow.logging import log_comparison

    alias = args.against_alias
    name = args.against_model or args.model
    before, source = verified_alias_report(name, alias, public_key=public_key, client=client)
    if before is None:  # source says why
        print(f"{source[:1].upper()}{source[1:]}: nothing to compare with.")
        return None
    diff = compare_reports(before, candidate)
    if not args.quiet:
        for line in comparison_lines(diff, before=f"{alias} ({source})", after=run_id):
            print(line)
    try:
        log_comparison(client, run_id, diff, alias)
    except Exception as exc:  # the comparison informs; it never changes the verdict
        print(f"warning: cannot log the comparison's metrics into run {run_id}: {exc}")
    return diff


def policy_line(decision: Decision, report: AuditReport, config: Path | None) -> str:
    """Which policy `check` applied, named by the digest every output of the run shows
    (`Decision.policy_sha256`), and whether it is the one the audit was run with."""
    applied = decision.policy_sha256
    if config is None:
        return f"Policy: the audit's own (policy_sha256 {applied})."
    own = "the audit's own" if applied == report.audit.policy_sha256 else "not the audit's own"
    return (
        f"Policy: the gate rules of {str(config)!r} over the audit's risk definitions "
        f"(policy_sha256 {applied}; {own}, which is {report.audit.policy_sha256})."
    )


def run_check(args: argparse.Namespace) -> github.Outcome:
    """``privacy-gate check``: a report file, or the signed audit of an MLflow run/version."""
    source = _check_source(args)
    _check_against(args, source)
    if source == "report":
        public_key = _public_key(args, "check", required=False) if args.public_key else None
        if not Path(args.report).exists():  # a missing audit is a failed gate, never an error
            return _refused(
                [
                    f"no audit report at {str(args.report)!r}. HINT: run 'privacy-gate audit' "
                    "or 'privacy-gate score' first, or check the path."
                ],
                quiet=args.quiet,
                report_path=None,
                source=f"report {args.report}",
            )
        try:
            report = load_report(args.report)
        except OutdatedReportError as exc:  # a stale audit fails the gate, as a missing one
            return _refused(
                [str(exc)],
                quiet=args.quiet,
                report_path=str(args.report),
                source=f"report {args.report}",
            )
        signature = None
        if public_key is not None:
            try:
                verified = verify_signed(report, public_key)
            except signing.SignatureError as exc:
                return _refused(
                    [f"the audit signature is not valid: {exc}"],
                    quiet=args.quiet,
                    report_path=str(args.report),
                    source=f"report {args.report}",
                )
            signature = f"valid, key {verified.key_fingerprint[:16]}"
        typed = recheck(
            read_audit_report(report, source=f"The report {str(args.report)!r}"), args.config
        )
        decision = typed.decision
        if not args.quiet:
            print(policy_line(decision, typed, args.config))
        print_decision(decision, typed, quiet=args.quiet)
        return gate_outcome(
            typed,
            report_path=str(args.report),
            source=f"report {args.report}",
            signature=signature,
        )
    public_key = _public_key(args, "check", required=True)
    tracking_uri = resolve_tracking_uri(args, "check")
    try:
        from privacy_gate.mlflow.fetch import fetch_model_version_audit, fetch_run_audit
        from privacy_gate.mlflow.promote import client_for

        client = client_for(tracking_uri)
    except ImportError:
        raise InputError(
            f"'privacy-gate check --{'mlflow-run' if source == 'run' else 'model'}' reads "
            f"the audit from MLflow and needs the mlflow client package. {SKINNY_HINT}"
        ) from None
    fetched = (
        fetch_run_audit(args.mlflow_run, public_key=public_key, client=client)
        if source == "run"
        else fetch_model_version_audit(
            args.model, args.version, public_key=public_key, client=client
        )
    )
    if fetched.refusals or fetched.report is None:
        return _refused(
            fetched.refusals or ["no privacy audit was found"],
            quiet=args.quiet,
            report_path=fetched.artifact_uri if fetched.run_id else None,
            source=fetched.source,
        )
    report = fetched.report
    report_path = fetched.artifact_uri
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(report, args.out / REPORT_FILE)
        report_path = str(args.out / REPORT_FILE)
    typed = recheck(read_audit_report(report, source=f"The audit of {fetched.source}"), args.config)
    decision = typed.decision
    if not args.quiet:
        print(
            f"Verified the signed audit of {fetched.source} "
            f"(key {signing.public_key_fingerprint(public_key)[:16]})."
        )
        print(policy_line(decision, typed, args.config))
    print_decision(decision, typed, quiet=args.quiet)
    comparison = (
        _against_champion(args, client, public_key, typed, fetched.run_id)
        if args.against_alias
        else None
    )
    outcome = replace(
        gate_outcome(
            typed,
            report_path=report_path,
            source=fetched.source,
            signature=f"valid, key {signing.public_key_fingerprint(public_key)[:16]}",
        ),
        comparison=comparison,
        against=args.against_alias or "champion",
    )
    if args.out is not None and outcome.report is not None:
        write_pages(args.out, outcome.report, outcome.comparison, outcome.against)
    return outcome
