"""Command line: ``privacy-gate score|check|audit|policy|keys|promote``.

Exit codes: 0 pass, 1 gate failed (an under-powered or missing audit included),
2 error (bad input, bad config, any exception). ``promote``: 0 promoted, 1 refused, 2 error
(server unreachable, model or version not found, bad key). Errors print one line naming
the problem; ``--debug`` adds the traceback.

GitHub mode (``--github``, on by itself when ``GITHUB_ACTIONS=true``): ``score``, ``check``
and ``audit`` also write a job summary, annotations and step outputs
(`privacy_gate.github`), for a pass, a failed gate and an error alike.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from privacy_gate import github, signing
from privacy_gate._version import __version__
from privacy_gate.config import default_config, default_policy_text
from privacy_gate.errors import InputError, OutdatedReportError, PrivacyGateError
from privacy_gate.gate import Decision, Status
from privacy_gate.pipeline import AuditResult, check_report, score
from privacy_gate.render.recommendation import recommendation_lines
from privacy_gate.report import REPORT_FILE, load_report, write_json

__all__ = ["main"]

EXIT_ERROR = Status.ERROR.exit_code
_GATE_COMMANDS = ("score", "check", "audit")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_VERSION = re.compile(r"[1-9][0-9]*")
_SKINNY_HINT = "HINT: pip install 'privacy-gate[mlflow-skinny]' (or the full 'mlflow' extra)."


def _add_github_option(command: argparse.ArgumentParser, *, default: Any) -> None:
    command.add_argument(
        "--github",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="GitHub Actions mode: job summary, annotations and step outputs (default: on "
        f"when {github.ACTIONS_VARIABLE}=true)",
    )


def _add_output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--raw-ids",
        action="store_true",
        help="write raw patient/record ids instead of keyed pseudonyms",
    )
    command.add_argument(
        "--no-plots", action="store_true", help="skip report.md/report.html and the plots"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privacy-gate",
        description="Patient-level membership-inference audit and release gate.",
        epilog="Exit codes: 0 pass, 1 gate failed, 2 error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the verdict")
    _add_github_option(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score_cmd = commands.add_parser("score", help="audit reference-model signals")
    score_cmd.add_argument("--signals", required=True, type=Path, help="signals.npz")
    score_cmd.add_argument("--records", required=True, type=Path, help="records.csv")
    score_cmd.add_argument("--config", type=Path, help="policy YAML (default: packaged policy)")
    score_cmd.add_argument("--out", required=True, type=Path, help="output directory")
    _add_output_options(score_cmd)
    _add_github_option(score_cmd, default=argparse.SUPPRESS)

    _add_check_command(commands)

    audit_cmd = commands.add_parser(
        "audit", help="train reference models for a PyTorch model and audit it (needs torch)"
    )
    audit_cmd.add_argument("--config", required=True, type=Path, help="audit.yaml")
    audit_cmd.add_argument("--out", type=Path, help="output directory (overrides 'out')")
    _add_output_options(audit_cmd)
    _add_github_option(audit_cmd, default=argparse.SUPPRESS)

    commands.add_parser("policy", help="print the packaged default policy and its hash")
    _add_recommend_command(commands)
    _add_keys_commands(commands)
    _add_promote_command(commands)
    return parser


def _add_recommend_command(commands: Any) -> None:
    recommend = commands.add_parser(
        "recommend",
        help="DP-SGD settings that keep a pipeline within a report's policy (needs Opacus)",
        description="Compute the DP-SGD retraining recommendation for an existing report "
        "(audit and the Lightning callback add it themselves; use this after 'score'). "
        "The noise multiplier is the smallest whose PRV AUC ceiling keeps the patient with "
        "the most records within the policy's patient-AUC limit for this training schedule.",
    )
    recommend.add_argument("report", type=Path, help="report.json")
    recommend.add_argument("--config", type=Path, help="policy YAML (default: the report's)")
    recommend.add_argument("--dataset-size", type=int, required=True, help="training records N")
    recommend.add_argument("--batch-size", type=int, required=True, help="(expected) batch size")
    recommend.add_argument("--epochs", type=int, required=True, help="training epochs")
    recommend.add_argument("--max-grad-norm", type=float, help="per-sample clipping norm")
    recommend.add_argument(
        "--max-records-per-patient",
        type=int,
        help="most records one patient has (default: from patients.csv beside the report)",
    )
    recommend.add_argument("--json", action="store_true", help="print the section as JSON")


def _max_records_per_patient(args: argparse.Namespace) -> int:
    if args.max_records_per_patient is not None:
        if args.max_records_per_patient < 1:
            raise InputError(
                "The '--max-records-per-patient' option of recommend must be an integer >= 1. "
                f"Got {args.max_records_per_patient} instead."
            )
        return int(args.max_records_per_patient)
    patients = Path(args.report).with_name("patients.csv")
    try:
        with patients.open(newline="", encoding="utf-8") as handle:  # raw ids may be quoted
            return max(int(row["n_records"]) for row in csv.DictReader(handle))
    except (OSError, ValueError, KeyError, csv.Error) as exc:
        raise InputError(
            f"recommend needs the largest number of records per patient and cannot read it "
            f"from {str(patients)!r} ({exc}). HINT: pass --max-records-per-patient."
        ) from None


def _recommend(args: argparse.Namespace) -> int:
    """``privacy-gate recommend``: 0 with settings, 2 on bad input or without Opacus."""
    from privacy_gate.dp.recommend import recommend_for_report
    from privacy_gate.pipeline import policy_for_check

    report = load_report(args.report)
    section = recommend_for_report(
        report,
        policy_for_check(report, args.config),
        dataset_size=args.dataset_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_records_per_patient=_max_records_per_patient(args),
        max_grad_norm=args.max_grad_norm,
    )
    if args.json:
        print(json.dumps(section, indent=2, sort_keys=True))
    else:
        print("\n".join(recommendation_lines({"dp_recommendation": section})))
    return 0 if section.get("status") == "recommended" else 2


def _add_check_command(commands: Any) -> None:
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
    check_cmd.add_argument("--config", type=Path, help="policy YAML (gate.* rules)")
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
        "--out", type=Path, help="with an MLflow source: write the verified report.json here"
    )
    _add_github_option(check_cmd, default=argparse.SUPPRESS)


def _add_promote_command(commands: Any) -> None:
    promote_cmd = commands.add_parser(
        "promote",
        help="set a registered model version's alias if its signed audit passes "
        "(exit 0 promoted, 1 refused, 2 error)",
        description=(
            "Verify the version's signed audit (signature, status, this version's run, "
            "these weights, the policy) and only then set the alias. Needs the mlflow "
            "package."
        ),
    )
    promote_cmd.add_argument("--model", required=True, help="registered model name")
    promote_cmd.add_argument("--version", required=True, help="model version")
    promote_cmd.add_argument("--alias", required=True, help="alias to set, e.g. champion")
    promote_cmd.add_argument(
        "--public-key",
        type=Path,
        help=f"public key PEM (default: ${signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE})",
    )
    promote_cmd.add_argument(
        "--policy-sha256", help="require the audit to have used this policy digest"
    )
    promote_cmd.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)"
    )


def _add_keys_commands(commands: Any) -> None:
    keys_cmd = commands.add_parser(
        "keys",
        help="Ed25519 keys that sign audits (generate, fingerprint, sign, verify)",
        description=(
            "The auditing side signs reports with the private key; verifiers hold only the "
            f"public key. Environment: {signing.SIGNING_KEY_ENVIRONMENT_VARIABLE} (private "
            f"key path), {signing.PASSPHRASE_ENVIRONMENT_VARIABLE} (its passphrase), "
            f"{signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE} (public key path)."
        ),
    )
    keys = keys_cmd.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    generate = keys.add_parser(
        "generate",
        help="write a new key pair (private key mode 0600; encrypted when "
        f"{signing.PASSPHRASE_ENVIRONMENT_VARIABLE} is set)",
    )
    generate.add_argument("--private", required=True, type=Path, help="private key PEM to write")
    generate.add_argument("--public", required=True, type=Path, help="public key PEM to write")
    generate.add_argument("--force", action="store_true", help="overwrite existing key files")
    fingerprint = keys.add_parser("fingerprint", help="print a key's public_key_sha256")
    fingerprint.add_argument("key", type=Path, help="public (or private) key PEM")
    sign = keys.add_parser("sign", help="sign a report.json with the private key")
    sign.add_argument("report", type=Path, help="report.json")
    sign.add_argument(
        "--key",
        type=Path,
        help=f"private key PEM (default: ${signing.SIGNING_KEY_ENVIRONMENT_VARIABLE})",
    )
    sign.add_argument("--run-id", help="id of the run that trained the audited model")
    sign.add_argument("--model-sha256", help="SHA-256 of the audited model's weights")
    sign.add_argument("--out", type=Path, help="signed report to write (default: in place)")
    verify = keys.add_parser(
        "verify", help="verify a report's signature (exit 0 valid, 1 invalid or unsigned)"
    )
    verify.add_argument("report", type=Path, help="report.json")
    verify.add_argument(
        "--public-key",
        type=Path,
        help=f"public key PEM (default: ${signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE})",
    )


def _read_report_object(path: Path) -> dict[str, Any]:
    """Any JSON object: a report with a section removed is a bad signature (1), not unreadable."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"Cannot read the report {str(path)!r}: {exc.strerror}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"The report {str(path)!r} is not valid JSON: {exc}.") from None
    if not isinstance(report, dict):
        raise InputError(f"The report {str(path)!r} must be a JSON object.")
    return report


def _keys(args: argparse.Namespace) -> int:
    """``privacy-gate keys ...``: 0 done/valid, 1 invalid or unsigned, 2 error (raised)."""
    passphrase = signing.passphrase_from_environment()
    if args.keys_command == "generate":
        digest = signing.write_keypair(
            args.private, args.public, passphrase=passphrase, overwrite=args.force
        )
        if not args.quiet:
            print(
                f"Wrote {args.private} (private, mode 0600, "
                f"{'encrypted' if passphrase else 'NOT encrypted'}) and {args.public} "
                f"(public). public_key_sha256 {digest}"
            )
        return 0
    if args.keys_command == "fingerprint":
        head = args.key.read_bytes()[:4096] if args.key.is_file() else b""
        key = (
            signing.load_private_key(args.key, passphrase)
            if b"PRIVATE KEY-----" in head
            else signing.load_public_key(args.key)
        )
        print(signing.public_key_fingerprint(key))
        return 0
    if args.keys_command == "sign":
        private_key = (
            signing.load_private_key(args.key, passphrase)
            if args.key is not None
            else signing.signing_key_from_environment()
        )
        if private_key is None:
            raise InputError(
                f"No signing key: pass --key or set {signing.SIGNING_KEY_ENVIRONMENT_VARIABLE}."
            )
        signed = signing.sign_report(
            load_report(args.report),
            private_key,
            run_id=args.run_id,
            model_sha256=args.model_sha256,
        )
        out = args.out or args.report
        write_json(signed, out)
        if not args.quiet:
            print(f"Signed {out} (public_key_sha256 {signed['signature']['public_key_sha256']}).")
        return 0
    public_key = (
        signing.load_public_key(args.public_key)
        if args.public_key is not None
        else signing.public_key_from_environment()
    )
    if public_key is None:
        raise InputError(
            f"No public key: pass --public-key or set {signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE}."
        )
    report = _read_report_object(args.report)
    try:
        signing.verify_report(report, public_key)
    except signing.SignatureError as exc:
        print(f"privacy-gate: INVALID signature: {exc}")
        return 1
    audit = report.get("audit")
    audit = audit if isinstance(audit, dict) else {}
    decision = report.get("decision")
    status = decision.get("status") if isinstance(decision, dict) else None
    print(
        f"privacy-gate: VALID signature by {signing.public_key_fingerprint(public_key)} "
        f"(run_id {audit.get('run_id')}, model_sha256 {audit.get('model_sha256')}, "
        f"status {status})"
    )
    return 0


def _print_decision(decision: Decision, report: dict[str, Any], *, quiet: bool) -> None:
    print(decision.one_line())
    if quiet:
        return
    for violation in decision.violations:
        print(f"  FAIL {violation.rule.value}: {violation.message}")
    for warning in decision.warnings:
        print(f"  warning: {warning}")
    if decision.status is Status.FAIL:
        for line in recommendation_lines(report):
            print(f"  {line}")


def _print_summary(report: dict[str, Any], out: Path, *, plots: bool) -> None:
    summary, audit = report["summary"], report["audit"]
    print(
        f"{audit['records']} records, {audit['patients']} patients, "
        f"{audit['reference_models']} reference models: max patient AUC "
        f"{summary['patient_auc']['max']:.3f} (noise floor "
        f"{summary['noise_floor']['max_patient_auc_q95']:.3f}), "
        f"{summary['patients_at_risk']} confidently at risk. "
        f"Report: {out / ('report.html' if plots else 'report.json')}"
    )


def _audit(args: argparse.Namespace) -> tuple[AuditResult, Path]:
    try:
        from privacy_gate.training.job import load_job, run_job
    except ImportError as exc:
        raise InputError(
            f"'privacy-gate audit' trains PyTorch models and needs torch ({exc}). "
            "HINT: pip install 'privacy-gate[torch]'."
        ) from None
    if not args.quiet:  # progress lines with ETA when no terminal shows a bar
        logging.getLogger("privacy_gate.training").setLevel(logging.INFO)
    job = load_job(args.config)
    out = args.out or job.out or Path("out/audit")
    result = run_job(job, out=out, raw_ids=args.raw_ids, plots=not args.no_plots)
    if not args.quiet:
        _print_summary(result.report, out, plots=not args.no_plots)
    if job.mlflow is not None:
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
                f"Open the UI: mlflow ui --backend-store-uri {job.mlflow.tracking_uri}"
            )
    return result, out


def _tracking_uri(args: argparse.Namespace, command: str) -> str:
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


def _gate_outcome(
    report: dict[str, Any],
    decision: Decision,
    *,
    report_path: str,
    source: str | None = None,
    signature: str | None = None,
) -> github.Outcome:
    return github.Outcome(
        status=decision.status,
        report=github.evaluated_report(report, decision),
        report_path=report_path,
        source=source,
        signature=signature,
    )


def _refused(
    refusals: list[str], *, quiet: bool, report_path: str | None, source: str
) -> github.Outcome:
    print("privacy-gate: FAIL (audit not accepted)")
    if not quiet:
        for reason in refusals:
            print(f"  FAIL audit: {reason}")
    return github.Outcome(
        status=Status.FAIL, refusals=tuple(refusals), report_path=report_path, source=source
    )


def _check(args: argparse.Namespace) -> github.Outcome:
    """``privacy-gate check``: a report file, or the signed audit of an MLflow run/version."""
    source = _check_source(args)
    if args.config is None and not args.quiet:
        print(f"Using the packaged default gate (policy_sha256 {default_config().sha256()}).")
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
                signing.verify_report(report, public_key)
            except signing.SignatureError as exc:
                return _refused(
                    [f"the audit signature is not valid: {exc}"],
                    quiet=args.quiet,
                    report_path=str(args.report),
                    source=f"report {args.report}",
                )
            signature = f"valid, key {signing.public_key_fingerprint(public_key)[:16]}"
        decision = check_report(report, args.config, source=f"The report {str(args.report)!r}")
        _print_decision(decision, report, quiet=args.quiet)
        return _gate_outcome(
            report,
            decision,
            report_path=str(args.report),
            source=f"report {args.report}",
            signature=signature,
        )
    public_key = _public_key(args, "check", required=True)
    tracking_uri = _tracking_uri(args, "check")
    try:
        from privacy_gate.mlflow.fetch import fetch_model_version_audit, fetch_run_audit
        from privacy_gate.mlflow.promote import client_for

        client = client_for(tracking_uri)
    except ImportError:
        raise InputError(
            f"'privacy-gate check --{'mlflow-run' if source == 'run' else 'model'}' reads "
            f"the audit from MLflow and needs the mlflow client package. {_SKINNY_HINT}"
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
    decision = check_report(report, args.config, source=f"The audit of {fetched.source}")
    if not args.quiet:
        print(
            f"Verified the signed audit of {fetched.source} "
            f"(key {signing.public_key_fingerprint(public_key)[:16]})."
        )
    _print_decision(decision, report, quiet=args.quiet)
    return _gate_outcome(
        report,
        decision,
        report_path=report_path,
        source=fetched.source,
        signature=f"valid, key {signing.public_key_fingerprint(public_key)[:16]}",
    )


def _promote(args: argparse.Namespace) -> int:
    """``privacy-gate promote``: 0 promoted, 1 refused, 2 error (raised)."""
    tracking_uri = _tracking_uri(args, "promote")
    public_key = signing.load_public_key(args.public_key) if args.public_key else None
    from privacy_gate.mlflow.promote import client_for, promote  # imports mlflow lazily

    try:
        client = client_for(tracking_uri)
    except ImportError:
        raise InputError(
            "'privacy-gate promote' needs the mlflow package. "
            "HINT: pip install 'privacy-gate[mlflow]'."
        ) from None
    result = promote(
        args.model,
        args.version,
        args.alias,
        public_key=public_key,
        policy_sha256=args.policy_sha256,
        client=client,
    )
    where = f"{args.model!r} version {args.version}"
    if result.allowed:
        print(f"privacy-gate: PROMOTED {where} to alias {args.alias!r}.")
        return 0
    print(f"privacy-gate: REFUSED to promote {where} to alias {args.alias!r}:")
    for reason in result.reasons:
        print(f"  - {reason}")
    for violation in result.violations:
        print(f"  FAIL {violation.get('rule')}: {violation.get('message', '')}")
    if result.report is not None:
        for line in recommendation_lines(result.report):
            print(f"  {line}")
    return 1


def _gate(args: argparse.Namespace) -> github.Outcome:
    """``score``, ``check`` or ``audit``: the outcome, printed as it is reached."""
    if args.command == "check":
        return _check(args)
    if args.command == "audit":
        result, out = _audit(args)
    else:
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
        out = args.out
        if not args.quiet:
            _print_summary(result.report, out, plots=not args.no_plots)
    _print_decision(result.decision, result.report, quiet=args.quiet)
    return _gate_outcome(result.report, result.decision, report_path=str(out / REPORT_FILE))


def _run(args: argparse.Namespace) -> int:
    if args.command == "keys":
        return _keys(args)
    if args.command == "promote":
        return _promote(args)
    if args.command == "recommend":
        return _recommend(args)
    if args.command == "policy":
        print(default_policy_text(), end="")
        print(f"# policy_sha256: {default_config().sha256()}")
        return 0
    outcome = _gate(args)
    if github.enabled(args.github):
        github.write_github(outcome)
    return outcome.status.exit_code


def _error_to_github(args: argparse.Namespace, message: str) -> None:
    """GitHub mode: an error is a failed check with its own summary, annotation and outputs."""
    if args.command not in _GATE_COMMANDS or not github.enabled(args.github):
        return
    path = getattr(args, "report", None) if args.command == "check" else getattr(args, "out", None)
    if path is not None and args.command != "check":
        path = Path(path) / REPORT_FILE
    try:
        github.write_github(
            github.Outcome(
                status=Status.ERROR,
                error=message,
                report_path=None if path is None else str(path),
            )
        )
    except OSError as exc:
        print(
            f"privacy-gate: cannot write the GitHub job summary or outputs: {exc}", file=sys.stderr
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privacy-gate`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (PrivacyGateError, OSError, ValueError, KeyError, MemoryError) as exc:
        if args.debug:
            traceback.print_exc()
        kind = "error" if isinstance(exc, PrivacyGateError) else type(exc).__name__
        print(f"privacy-gate: ERROR ({kind}): {exc}", file=sys.stderr)
        _error_to_github(args, f"{exc}")
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(
            f"privacy-gate: ERROR (unexpected {type(exc).__name__}): {exc}. HINT: re-run "
            "with --debug and report the traceback.",
            file=sys.stderr,
        )
        _error_to_github(args, f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_ERROR
