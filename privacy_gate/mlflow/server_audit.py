"""What the gated registry store reads on the server: a run's audit report and the
manifest of a registered version's files (bytes hashed; no model is ever loaded, no torch
is imported), through the server's own artifact store; and `upsert`, how its writes
survive concurrent writers of the same tag or alias."""

from __future__ import annotations

import functools
import logging
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from privacy_gate.mlflow._compat import VersionIdentity, server_artifact_destination
from privacy_gate.mlflow.logging import REPORT_ARTIFACT
from privacy_gate.mlflow.registry_settings import GateSettings
from privacy_gate.mlflow.verification import audit_refusals
from privacy_gate.model_files import ModelFiles, manifest_of
from privacy_gate.report import parse_report_json
from privacy_gate.signing import PUBLIC_KEY_ENVIRONMENT_VARIABLE, public_key_from_environment

__all__ = [
    "RunReport",
    "download",
    "read_run_report",
    "upsert",
    "version_model_files",
    "version_refusals",
]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
UPSERT_ATTEMPTS = 3


MAX_REPORT_BYTES = 32 * 1024 * 1024
"""A larger report.json is refused unread (privacy-gate writes a few MB at most)."""


@dataclass(frozen=True)
class RunReport:
    """A run's ``privacy_gate/report.json`` as parsed JSON (any value: the verification
    says what is wrong with it), or why there is none to verify."""

    data: Any = None
    problem: str | None = None


def read_run_report(run_id: str, tracking_uri: str | None) -> RunReport:
    """The run's ``privacy_gate/report.json``, strictly parsed
    (`privacy_gate.report.parse_report_json`); a missing, oversized or unparsable file
    gives the precise reason instead."""
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            local = Path(download(f"{run.info.artifact_uri}/{REPORT_ARTIFACT}", tmp))
            size = local.stat().st_size
            if size > MAX_REPORT_BYTES:
                return RunReport(
                    problem=f"the audit report is {size} bytes, over the "
                    f"{MAX_REPORT_BYTES}-byte limit"
                )
            raw = local.read_bytes()
    except Exception as exc:
        _LOG.warning("no audit report for run %s: %s", run_id, exc)
        return RunReport()
    try:
        data = parse_report_json(raw.decode("utf-8"))
        if data is None:
            return RunReport(problem="the audit report is JSON null, not an object")
        return RunReport(data=data)
    except UnicodeDecodeError:
        return RunReport(problem="the audit report is not UTF-8 text")
    except ValueError as exc:
        return RunReport(problem=f"the audit report is not valid JSON: {str(exc)[:300]}")


def version_model_files(location: str) -> ModelFiles | None:
    """The manifest of a version's files as stored now, at the location pinned with the
    version (not looked up again by name: a rename could swap the version in between):
    bytes hashed, nothing loaded, no model code run (None when unreadable: that refuses)."""
    try:
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            return manifest_of(download(location, tmp))
    except Exception as exc:
        _LOG.error("cannot read the model files at %r: %s", location, exc)
        return None


def version_refusals(
    pinned: VersionIdentity, tracking_uri: str | None, settings: GateSettings
) -> tuple[list[str], Any]:
    """Every reason to refuse the pinned version, and its audit report (parsed JSON)."""
    try:
        public_key = public_key_from_environment()
    except Exception as exc:
        return [f"the audit public key cannot be read ({exc})"], None
    if public_key is None:
        return [
            f"the server has no audit public key ({PUBLIC_KEY_ENVIRONMENT_VARIABLE} is not "
            "set), so no audit can be verified"
        ], None
    run_id, source, location, _ = pinned
    if not run_id:
        return ["the model version has no run, so it has no audit"], None
    found = read_run_report(run_id, tracking_uri)
    if found.problem is not None:
        return [found.problem], None
    # The signature, status and run first: the files are read only for a genuine, passing
    # audit of this run (reading them is the expensive part).
    check = functools.partial(
        audit_refusals,
        found.data,
        public_key=public_key,
        run_id=run_id,
        policy_sha256=settings.policy_sha256,
        allow_pickle=settings.allow_pickle,
    )
    reasons = check(model_files=None, check_files=False)
    if reasons:
        return reasons, found.data
    where = location or source
    files = version_model_files(where) if where else None
    return check(model_files=files), found.data


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
