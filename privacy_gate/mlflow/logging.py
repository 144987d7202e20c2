"""Log an audit report into an MLflow run: metrics, params, tags and artifacts.

The one place besides the rest of `privacy_gate.mlflow` where MLflow is used (STYLE.md
point 9). MLflow is imported lazily, so the package imports without it.

Metric keys: `privacy_gate.metrics` (one source for MLflow and the Lightning callback); a
key over MLflow's length limit is shortened and mapped back in ``metric_keys_map.json``.

Signed audits (docs/explanation/registry-security.md): with a signing key (the ``signing_key``
argument, else ``PRIVACY_GATE_SIGNING_KEY``) the report is signed with ``audit.run_id`` set
to the run it is logged to and ``audit.model_sha256`` to the audited weights' digest, and
that signed report is the ``privacy_gate/report.json`` artifact `privacy_gate.mlflow.promote`
and the registry plugin verify. The tag ``privacy_gate.signed`` says whether it was signed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privacy_gate._version import __version__
from privacy_gate.comparison import AuditComparison
from privacy_gate.errors import InputError, ReportError, invalid_value
from privacy_gate.metric_keys import shorten_key
from privacy_gate.metrics import comparison_metrics, report_metrics
from privacy_gate.model_files import ModelFiles
from privacy_gate.report import REPORT_FILE, canonical_json, write_json
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import sign_report, signing_key_from_environment

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from mlflow.tracking import MlflowClient

__all__ = [
    "ARTIFACT_PATH",
    "KEYS_MAP_FILE",
    "REPORT_ARTIFACT",
    "SIGNED_TAG",
    "active_run_location",
    "client_for",
    "experiment_id_for",
    "log_comparison",
    "log_report",
    "report_metrics",
    "report_params",
    "report_sha256",
    "report_tags",
]

ARTIFACT_PATH = "privacy_gate"
"""The run's artifact folder that holds the audit files."""
REPORT_ARTIFACT = f"{ARTIFACT_PATH}/{REPORT_FILE}"
"""The run-relative path of the (signed) report that promotion verifies."""
SIGNED_TAG = "privacy_gate.signed"
"""Run tag: ``true`` when the logged report.json carries a signature."""
KEYS_MAP_FILE = "metric_keys_map.json"
"""Artifact mapping each shortened metric key to its full key (only when one was)."""

_ARTIFACT_FILES = (REPORT_FILE, "report.md", "report.html", "patients.csv")
_VIOLATIONS_TAG_LENGTH = 500
_INSTALL_HINT = "HINT: pip install 'privacy-gate[mlflow]'."


def report_sha256(report: Mapping[str, Any]) -> str:
    """SHA-256 of the report's canonical JSON (`privacy_gate.report.canonical_json`)."""
    return hashlib.sha256(canonical_json(report)).hexdigest()


def report_params(report: AuditReport) -> dict[str, str]:
    """The audit's settings as MLflow params (the backend when the audit trained)."""
    audit = report.audit
    params = {
        "privacy_gate.reference_models": audit.reference_models,
        "privacy_gate.backend": audit.training.backend if audit.training else None,
        "privacy_gate.policy_sha256": audit.policy_sha256,
        "privacy_gate.records": audit.records,
        "privacy_gate.patients": audit.patients,
    }
    return {key: str(value) for key, value in params.items() if value is not None}


def report_tags(report: AuditReport, document: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The verdict as MLflow tags: status, digests, version and the violated rules.

    ``document`` is the JSON logged (the signed copy when signed; ``report.to_dict()``
    when None): ``privacy_gate.report_sha256`` is its digest.
    """
    rules = dict.fromkeys(v.rule for v in report.decision.violations)
    violations = ",".join(rules)
    if len(violations) > _VIOLATIONS_TAG_LENGTH:
        violations = violations[: _VIOLATIONS_TAG_LENGTH - 3] + "..."
    return {
        "privacy_gate.status": report.decision.status.value,
        "privacy_gate.report_sha256": report_sha256(
            report.to_dict() if document is None else document
        ),
        "privacy_gate.policy_sha256": report.audit.policy_sha256,
        "privacy_gate.version": report.audit.package_version or __version__,
        "privacy_gate.violations": violations,
    }


def _client(client: MlflowClient | None) -> MlflowClient:
    if client is not None:
        return client
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError(f"Logging to MLflow needs the mlflow package. {_INSTALL_HINT}") from exc
    return MlflowClient()


def active_run_location() -> tuple[str, str] | None:
    """The active MLflow run's id and its tracking URI, or None: no active run, or mlflow
    not imported by this process (this never imports it, so a pipeline without MLflow
    needs no mlflow package). A framework's MLflow integration (e.g. Hugging Face's
    ``MLflowCallback``) holds its run as the active run."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    run = mlflow.active_run()
    if run is None:
        return None
    return str(run.info.run_id), str(mlflow.get_tracking_uri())


def client_for(tracking_uri: str) -> MlflowClient:
    """An MLflow client of ``tracking_uri``."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError(f"Logging to MLflow needs the mlflow package. {_INSTALL_HINT}") from exc
    return MlflowClient(tracking_uri=tracking_uri)


def _active_run_id() -> str:
    try:
        import mlflow
    except ImportError as exc:
        raise ImportError(f"Logging to MLflow needs the mlflow package. {_INSTALL_HINT}") from exc

    run = mlflow.active_run()
    if run is None:
        raise ValueError(
            "The 'run_id' parameter of log_report must name an MLflow run when no run is "
            "active. Got None instead. HINT: pass run_id=... or call it inside "
            "'with mlflow.start_run():'."
        )
    return str(run.info.run_id)


def _artifact_files(out_dir: Path, *, include_records: bool) -> list[Path]:
    names = list(_ARTIFACT_FILES) + (["records.csv"] if include_records else [])
    files = [out_dir / name for name in names if (out_dir / name).is_file()]
    files += sorted(p for p in out_dir.glob("*.png") if p.is_file())
    return files


def _check_report_file(report: Mapping[str, Any], out_dir: Path) -> None:
    """The out_dir's report.json must be this report (artifacts of another audit mislead)."""
    path = out_dir / REPORT_FILE
    if not path.is_file():
        raise ReportError(
            f"The 'out_dir' parameter of log_report must hold the audit's {REPORT_FILE}. "
            f"Got {str(out_dir)!r} instead. HINT: pass the directory written by "
            "privacy_gate.write_outputs or 'privacy-gate score'."
        )
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    if canonical_json(on_disk) != canonical_json(report):
        raise ReportError(
            f"The 'out_dir' parameter of log_report must hold this report, but "
            f"{str(path)!r} is another audit (SHA-256 of its canonical JSON differs). "
            "HINT: pass the directory this report was written to."
        )


def log_report(
    report: AuditReport,
    *,
    run_id: str | None = None,
    out_dir: str | Path | None = None,
    client: MlflowClient | None = None,
    include_records: bool = False,
    signing_key: Ed25519PrivateKey | None = None,
    model_sha256: str | None = None,
    model_files: ModelFiles | None = None,
) -> dict[str, Any]:
    """Log an audit report into an existing MLflow run.

    Metrics, params and tags go in batches (`MlflowClient.log_batch`); files of
    ``out_dir`` go under the artifact folder ``privacy_gate``: ``report.json``,
    ``report.md``, ``report.html``, the plots and ``patients.csv`` (``records.csv`` only
    with ``include_records``). Params are immutable in MLflow: logging a second report
    with other settings into the same run fails.

    Args:
        report: the typed report (``AuditResult.report``; a ``report.json`` is read with
            `privacy_gate.report.load_audit_report`).
        run_id: the run to log into; the active run when None.
        out_dir: the directory the audit was written to; no artifacts when None.
        client: the client to use (its tracking URI); ``MlflowClient()`` when None.
        include_records: also log ``records.csv`` (per-record figures under pseudonyms).
        signing_key: the auditing side's Ed25519 private key; ``PRIVACY_GATE_SIGNING_KEY``
            when None (unsigned when that is unset too). The report is signed with
            ``audit.run_id`` = the run it is logged to and ``audit.model_sha256``, and the
            signed report is uploaded as ``privacy_gate/report.json`` (also without
            ``out_dir``).
        model_sha256: digest of the audited weights
            (`privacy_gate.training.weights.weights_sha256`); the report's
            ``audit.model_sha256`` when None.
        model_files: the manifest of the audited model as logged (`log_audited_model`
            computes it); signed into ``audit.model_files``, which the registry gate
            compares with a version's files. Without it the audit cannot be promoted.

    Returns:
        The JSON report as logged: the signed copy when signed.

    Raises:
        ReportError: ``out_dir`` does not hold this report's ``report.json``.
        InputError: ``report`` is not an `AuditReport` (e.g. the JSON of a file).
        InputError: the signing key in the environment cannot be loaded, or
            ``model_sha256`` is not a SHA-256.
        ValueError: no ``run_id`` and no active run.
    """
    if not isinstance(report, AuditReport):
        raise InputError(
            invalid_value("report", "log_report", "an AuditReport", type(report).__name__,
                          "read a report.json with privacy_gate.report.load_audit_report")
        )  # fmt: skip
    document: Mapping[str, Any] = report.to_dict()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_report_file(document, out)  # before signing: that sets run_id and model_sha256
    run = run_id if run_id is not None else _active_run_id()
    key = signing_key if signing_key is not None else signing_key_from_environment()
    if key is not None:
        document = sign_report(
            document, key, run_id=run, model_sha256=model_sha256, model_files=model_files
        )
    mlflow_client = _client(client)

    from mlflow.entities import Metric, Param, RunTag

    timestamp = int(time.time() * 1000)
    full_keys = report_metrics(report)
    shortened = {shorten_key(k): k for k in full_keys if shorten_key(k) != k}
    metrics = [
        Metric(key=shorten_key(k), value=v, timestamp=timestamp, step=0)
        for k, v in full_keys.items()
    ]
    params = [Param(key=k, value=v) for k, v in report_params(report).items()]
    tags = [RunTag(key=k, value=v) for k, v in report_tags(report, document).items()]
    tags.append(RunTag(key=SIGNED_TAG, value="true" if key is not None else "false"))
    mlflow_client.log_batch(run, metrics=metrics, params=params, tags=tags)

    files = _artifact_files(out, include_records=include_records) if out is not None else []
    if key is not None:  # the signed report replaces the out_dir's unsigned one
        files = [path for path in files if path.name != REPORT_FILE]
    for path in files:
        mlflow_client.log_artifact(run, str(path), artifact_path=ARTIFACT_PATH)
    with tempfile.TemporaryDirectory() as tmp:
        if key is not None:
            signed_path = Path(tmp) / REPORT_FILE
            write_json(document, signed_path)
            mlflow_client.log_artifact(run, str(signed_path), artifact_path=ARTIFACT_PATH)
        if shortened:
            mapping = Path(tmp) / KEYS_MAP_FILE
            mapping.write_text(json.dumps(shortened, indent=2, sort_keys=True), "utf-8")
            mlflow_client.log_artifact(run, str(mapping), artifact_path=ARTIFACT_PATH)
    return dict(document)


def log_comparison(
    client: MlflowClient, run_id: str, diff: AuditComparison, against: str = "champion"
) -> dict[str, float]:
    """Log a comparison's key figures into the candidate's run
    (`privacy_gate.metrics.comparison_metrics`: ``privacy_gate/vs_<against>/...``)."""
    from mlflow.entities import Metric

    figures = comparison_metrics(diff, against)
    timestamp = int(time.time() * 1000)
    metrics = [Metric(key=k, value=v, timestamp=timestamp, step=0) for k, v in figures.items()]
    client.log_batch(run_id, metrics=metrics)
    return figures


def _artifacts_beside(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts in ``mlartifacts/`` beside the database file (MLflow's
    default, ``./mlruns`` in the working directory, scatters them wherever a job runs)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix) :]).resolve().parent / "mlartifacts").as_uri()


def experiment_id_for(client: MlflowClient, experiment: str, tracking_uri: str) -> str:
    """The id of ``experiment``, created (artifacts beside a SQLite store) if missing."""
    found = client.get_experiment_by_name(experiment)
    if found:
        return str(found.experiment_id)
    return str(
        client.create_experiment(experiment, artifact_location=_artifacts_beside(tracking_uri))
    )


def log_audit_run(
    report: AuditReport,
    *,
    tracking_uri: str,
    experiment: str = "privacy-gate",
    run_name: str | None = None,
    out_dir: str | Path | None = None,
    model_sha256: str | None = None,
) -> str:
    """Log an audit as a new run of ``experiment`` (created if missing); return its id.

    For pipelines without a run of their own (``privacy-gate audit`` with an ``mlflow``
    section). Signed when ``PRIVACY_GATE_SIGNING_KEY`` is set, as `log_report`.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(experiment_id_for(client, experiment, tracking_uri), run_name=run_name)
    try:
        log_report(
            report,
            run_id=run.info.run_id,
            out_dir=out_dir,
            client=client,
            model_sha256=model_sha256,
        )
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)
