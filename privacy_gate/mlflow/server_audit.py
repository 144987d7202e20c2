"""What the gated registry store reads on the server: a run's audit report and the
weights digest of a registered version, through the server's own artifact store."""

from __future__ import annotations

import logging
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from privacy_gate.mlflow._compat import server_artifact_destination
from privacy_gate.mlflow.logging import REPORT_ARTIFACT
from privacy_gate.mlflow.model_digest import logged_model_sha256
from privacy_gate.report import parse_report_json

__all__ = ["download", "read_run_report", "version_weights_sha256"]

_LOG = logging.getLogger(__name__)


def read_run_report(run_id: str, tracking_uri: str | None) -> dict[str, Any] | None:
    """The run's ``privacy_gate/report.json``; None when absent or unreadable."""
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            local = download(f"{run.info.artifact_uri}/{REPORT_ARTIFACT}", tmp)
            data = parse_report_json(Path(local).read_text(encoding="utf-8"))
    except Exception as exc:
        _LOG.warning("no audit report for run %s: %s", run_id, exc)
        return None
    return data if isinstance(data, dict) else None


def version_weights_sha256(store: Any, name: str, version: Any) -> str | None:
    """The weights digest recomputed from the version's model files (None on failure:
    an undigestable model is refused)."""
    try:
        uri = store.get_model_version_download_uri(name=name, version=version)
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            return logged_model_sha256(download(uri, tmp))
    except Exception as exc:
        _LOG.error("cannot digest the weights of %r version %s: %s", name, version, exc)
        return None


def download(artifact_uri: str, dst: str) -> str:
    """Download from the server's own artifact store when the URI is ``mlflow-artifacts:``.

    Inside ``mlflow server --artifacts-destination``, ``mlflow-artifacts:/<path>`` means
    ``<destination>/<path>``; any other URI goes through MLflow's artifact repositories.
    """
    from mlflow.artifacts import download_artifacts

    parsed = urllib.parse.urlparse(artifact_uri)
    destination = server_artifact_destination()
    if parsed.scheme == "mlflow-artifacts" and destination:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        relative = parsed.path.lstrip("/")
        if ".." in relative.split("/"):
            raise ValueError(f"refusing artifact path with '..': {artifact_uri!r}")
        repo = get_artifact_repository(destination)
        return str(repo.download_artifacts(relative, dst))  # type: ignore[no-untyped-call]
    return str(download_artifacts(artifact_uri=artifact_uri, dst_path=dst))
