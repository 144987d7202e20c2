"""Log the audited model and bind the audit to its bytes (docs/explanation/registry-security.md).

The registry gate compares a version's files with the manifest the signed audit names
(`privacy_gate.model_files`), so that manifest must describe the files exactly as the
artifact store holds them. `log_audited_model` therefore logs the model, downloads what
was stored, checks HERE (the auditing side, which trusts its own upload) that those files
load to the audited weights, and only then signs the manifest into the run's report.

Two uses:

- the release path (`privacy_gate.mlflow.release`) logs the candidate, then the report
  with ``model_files``;
- after a Lightning fit or ``mlflow.evaluate`` that logged the audit into a run,
  ``log_audited_model(model, run_id=..., input_example=...)`` logs the model into that run
  and re-signs the run's report with the manifest (``PRIVACY_GATE_SIGNING_KEY``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privacy_gate.errors import InputError, ReportError
from privacy_gate.mlflow.logging import ARTIFACT_PATH, REPORT_ARTIFACT
from privacy_gate.mlflow.promote import _download_report, client_download
from privacy_gate.model_files import PT2, ModelFiles, manifest_of
from privacy_gate.report import REPORT_FILE, write_json
from privacy_gate.signing import sign_report, signing_key_from_environment, verify_report

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from mlflow.tracking import MlflowClient

__all__ = [
    "AuditedModel",
    "log_audited_model",
    "logged_model_files",
    "stored_model_files",
    "tracking_uri_set",
]


@dataclass(frozen=True)
class AuditedModel:
    """The logged model (``model_uri``, ``model_id``) and the manifest its audit signs."""

    model_uri: str
    model_id: str | None
    model_files: ModelFiles
    report: dict[str, Any] | None = None


@contextlib.contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI for ``log_model`` (it logs through the fluent API),
    put back afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _in_run(run_id: str) -> Iterator[None]:
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    from privacy_gate.mlflow._compat import fluent_experiment_cleared

    with fluent_experiment_cleared(), mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


def _stored_location(client: MlflowClient, model_uri: str) -> str:
    """Where the logged model's files are stored. Downloading ``models:/<id>`` itself would
    add a ``registered_model_meta`` file that the store does not hold."""
    model_id = model_uri.removeprefix("models:/")
    return str(client.get_logged_model(model_id).artifact_location)


def _download(client: MlflowClient, model_uri: str, dst: str) -> str:
    return client_download(client, _stored_location(client, model_uri), dst)


def logged_model_files(client: MlflowClient, model_uri: str) -> ModelFiles:
    """The manifest of a logged model's (``models:/<model id>``) files as stored now."""
    with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
        return manifest_of(_download(client, model_uri, tmp))


def stored_model_files(client: MlflowClient, model_uri: str, expected: str) -> ModelFiles:
    """Download the stored files once; their manifest, after checking they load to the
    audited weights (this side trusts its own upload, so loading it here is safe)."""
    import mlflow.pytorch

    from privacy_gate.training.weights import weights_sha256

    with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
        local = _download(client, model_uri, tmp)
        manifest = manifest_of(local)
        stored = weights_sha256(mlflow.pytorch.load_model(local, map_location="cpu"))
    if stored != expected:
        raise ReportError(
            f"The model logged at {model_uri!r} does not hold the audited weights (stored "
            f"{stored[:12]}..., audited {expected[:12]}...). HINT: log the model the audit "
            "trained (the candidate), unchanged since the audit."
        )
    return manifest


def _run_report(client: MlflowClient, run_id: str) -> dict[str, Any]:
    report = _download_report(client, run_id)
    if report is None:
        raise InputError(
            f"MLflow run {run_id!r} holds no readable {REPORT_ARTIFACT} (a JSON object). HINT: "
            "log the audit into the run first (the Lightning callback with an MLFlowLogger, "
            "privacy_gate.mlflow.log_report, or the privacy_gate evaluator)."
        )
    return report


def log_audited_model(
    model: Any,
    *,
    input_example: Any,
    run_id: str | None = None,
    client: MlflowClient | None = None,
    name: str = "model",
    expected_weights_sha256: str | None = None,
    signing_key: Ed25519PrivateKey | None = None,
    resign: bool | None = None,
    serialization_format: str = PT2,
) -> AuditedModel:
    """Log ``model`` into the run as an MLflow model and bind the run's audit to its bytes.

    Args:
        model: the audited ``nn.Module`` (the release candidate, unchanged).
        input_example: an input batch; ``pt2`` export traces the model with it.
        run_id: the run to log into (the active run when None).
        client: its tracking URI is used; ``MlflowClient()`` when None.
        name: the logged model's name.
        expected_weights_sha256: the audited weights' digest; the run's signed report's
            ``audit.model_sha256`` when None.
        signing_key: the auditing side's private key (``PRIVACY_GATE_SIGNING_KEY`` when
            None); it re-signs the run's report with the manifest.
        resign: re-sign and re-upload the run's report (default: when no
            ``expected_weights_sha256`` was given, i.e. the report is already logged).
        serialization_format: ``pt2`` (default; the export fixes the forward) or
            ``pickle`` (refused by protected aliases unless the registry allows it).

    Raises:
        InputError: no run, no report in the run, or no signing key where one is needed.
        ReportError: the stored files do not load to the audited weights, or the run's
            report is not signed by this key.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    mlflow_client = client if client is not None else MlflowClient()
    active = mlflow.active_run()
    run = run_id or (active.info.run_id if active is not None else None)
    if run is None:
        raise InputError(
            "The 'run_id' parameter of log_audited_model must name the audit's MLflow run "
            "when no run is active. Got None. HINT: pass run_id=... (the run the audit was "
            "logged into)."
        )
    resign = expected_weights_sha256 is None if resign is None else resign
    report = None
    key = signing_key if signing_key is not None else signing_key_from_environment()
    if resign:
        if key is None:
            raise InputError(
                "log_audited_model re-signs the run's audit with the model's manifest and "
                "needs the auditing side's private key. Got none: PRIVACY_GATE_SIGNING_KEY is "
                "unset. HINT: set it, or pass signing_key=..."
            )
        report = _run_report(mlflow_client, run)
        verify_report(report, key.public_key())  # our own audit, not a stranger's file
        audit = report.get("audit")
        expected = audit.get("model_sha256") if isinstance(audit, Mapping) else None
        if expected_weights_sha256 is None:
            expected_weights_sha256 = expected if isinstance(expected, str) else None
    if expected_weights_sha256 is None:
        raise ReportError(
            f"The audit of run {run!r} names no model weights (audit.model_sha256), so no "
            "model can be bound to it. HINT: run the audit with the candidate model."
        )
    from privacy_gate.training.weights import weights_sha256

    given = weights_sha256(model)
    if given != expected_weights_sha256:  # refused before anything is logged
        raise ReportError(
            f"The model given to log_audited_model is not the audited one (weights "
            f"{given[:12]}..., audited {expected_weights_sha256[:12]}...). HINT: pass the "
            "model the audit trained or was given (the release candidate), unchanged."
        )
    with tracking_uri_set(str(mlflow_client.tracking_uri)), _in_run(run):
        info = mlflow.pytorch.log_model(
            model,
            name=name,
            input_example=input_example,
            serialization_format=serialization_format,
            pip_requirements=["torch"],
        )
    manifest = stored_model_files(mlflow_client, info.model_uri, expected_weights_sha256)
    if resign and report is not None and key is not None:
        signed = sign_report(report, key, run_id=run, model_sha256=None, model_files=manifest)
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            path = Path(tmp) / REPORT_FILE
            write_json(signed, path)
            mlflow_client.log_artifact(run, str(path), artifact_path=ARTIFACT_PATH)
        report = json.loads(json.dumps(signed))
    return AuditedModel(str(info.model_uri), info.model_id, manifest, report)
