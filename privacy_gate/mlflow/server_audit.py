"""What the gated registry store reads on the server: a run's audit report and the
weights digest of a registered version, through the server's own artifact store; and
`upsert`, how its writes survive concurrent writers of the same tag or alias."""

from __future__ import annotations

import logging
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from privacy_gate.mlflow._compat import server_artifact_destination
from privacy_gate.mlflow.logging import REPORT_ARTIFACT
from privacy_gate.mlflow.model_digest import logged_model_sha256
from privacy_gate.report import parse_report_json

__all__ = ["download", "read_run_report", "upsert", "version_weights_sha256"]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
UPSERT_ATTEMPTS = 3
# torch.export's deserializer (pt2 models, MLflow 3's default) keeps the model being loaded
# in a module global and fails ("_CURRENT_DESERIALIZER is already set") when two threads
# of one server worker load at once: a passing version would be refused. Loads take turns.
_LOAD_LOCK = threading.Lock()


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
            local = download(uri, tmp)
            with _LOAD_LOCK:
                return logged_model_sha256(local)
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


def upsert(write: Callable[..., _T], **kwargs: Any) -> _T:
    """``write(**kwargs)``, again when it lost a race to insert the same row.

    MLflow's SQL registry sets a version tag or an alias with ``session.merge``: a SELECT,
    then an INSERT when the row is absent. Two first writes of one key at once both
    INSERT, and one fails with a unique violation (HTTP 400 on PostgreSQL, after the gate
    had said yes). The row exists then, so the retry's merge updates it.
    """
    for attempt in range(1, UPSERT_ATTEMPTS + 1):
        try:
            return write(**kwargs)
        except Exception as exc:
            if attempt == UPSERT_ATTEMPTS or not _lost_insert_race(exc):
                raise
            _LOG.info("retrying %s after a concurrent insert: %s", write.__name__, exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _lost_insert_race(exc: BaseException) -> bool:
    try:
        from sqlalchemy.exc import IntegrityError
    except ImportError:  # pragma: no cover - MLflow's SQL stores need SQLAlchemy
        return False
    return isinstance(exc, IntegrityError) or isinstance(exc.__cause__, IntegrityError)
