"""What the gated registry store reads on the server: a run's audit report and the
manifest of a registered version's files (bytes hashed; no model is ever loaded, no torch
is imported), through the server's own artifact store; and `upsert`, how its writes
survive concurrent writers of the same tag or alias."""

from __future__ import annotations

import functools
import logging
import posixpath
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from privacy_gate.mlflow._compat import VersionIdentity, server_artifact_destination
from privacy_gate.mlflow.logging import REPORT_ARTIFACT
from privacy_gate.mlflow.registry_settings import GateSettings
from privacy_gate.mlflow.verification import audit_refusals, genuine_audit_of
from privacy_gate.model_files import ModelFiles, manifest_of
from privacy_gate.report import parse_report_json
from privacy_gate.signing import PUBLIC_KEY_ENVIRONMENT_VARIABLE, public_key_from_environment

__all__ = [
    "RunReport",
    "clean_artifact_path",
    "download",
    "location_problem",
    "read_run_report",
    "relative_artifact_path",
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
        uri = f"{run.info.artifact_uri}/{REPORT_ARTIFACT}"
        listed = _listed_size(uri)
        if listed is not None and listed > MAX_REPORT_BYTES:  # refused before download
            return RunReport(
                problem=f"the audit report is {listed} bytes, over the "
                f"{MAX_REPORT_BYTES}-byte limit"
            )
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            local = Path(download(uri, tmp))
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
    # The signature and run first: the files are read only for a genuine audit of this run
    # (reading them is the expensive part); then every reason is given, the files' too.
    check = functools.partial(
        audit_refusals,
        found.data,
        public_key=public_key,
        run_id=run_id,
        policy_sha256=settings.policy_sha256,
        allow_pickle=settings.allow_pickle,
    )
    reasons = check(model_files=None, check_files=False)
    if reasons and not genuine_audit_of(found.data, public_key, run_id):
        return reasons, found.data
    where = location or source
    problem = location_problem(where)
    if problem is not None:
        return [*reasons, problem], found.data
    return check(model_files=version_model_files(str(where))), found.data


_INDIRECT = ("runs", "models")


def location_problem(where: str | None) -> str | None:
    """Why a version's files cannot be bound where they are named, or None.

    ``runs:/`` and ``models:/`` name files indirectly: MLflow resolves them again at each
    download (a ``runs:/`` location also serves the newest logged model of that name in the
    run), so the bytes served could change while the version stays the same. Inside a
    server, files outside its own artifact store cannot be kept read-only by the artifact
    guard (`privacy_gate.mlflow.server_app`).
    """
    if not where:
        return "the model version names no files"
    scheme = urllib.parse.urlparse(where).scheme
    if scheme in _INDIRECT:
        return (
            f"the model version names its files indirectly ({where[:120]}), so what it "
            "serves could change without the version changing. HINT: register the logged "
            "model itself (models:/<model id>, as mlflow.register_model of a logged model's "
            "URI does), whose files have a fixed location"
        )
    destination = server_artifact_destination()
    if destination and relative_artifact_path(where, destination) is None:
        return (
            f"the model version's files ({where[:120]}) are outside this server's artifact "
            "store, where they cannot be kept unchanged. HINT: log the model through this "
            "tracking server"
        )
    return None


def relative_artifact_path(uri: str, destination: str | None) -> str | None:
    """Where ``uri`` lies in the artifact proxy's namespace (``1/models/m-1/artifacts``),
    or None when the proxy cannot reach it."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "mlflow-artifacts":
        return clean_artifact_path(parsed.path)
    if destination:
        base = destination.rstrip("/")
        for candidate in (uri, parsed.path if parsed.scheme == "file" else None):
            if candidate and (candidate == base or candidate.startswith(base + "/")):
                return clean_artifact_path(candidate[len(base) :])
        base_path = urllib.parse.urlparse(destination).path.rstrip("/")
        if parsed.scheme in ("", "file") and base_path and parsed.path.startswith(base_path + "/"):
            return clean_artifact_path(parsed.path[len(base_path) :])
    return None


def clean_artifact_path(path: str) -> str:
    """A relative POSIX path without dot segments or doubled slashes."""
    return posixpath.normpath("/" + path.strip("/")).lstrip("/")


def _repository(artifact_uri: str) -> tuple[Any, str | None]:
    """The artifact repository that serves ``artifact_uri`` here, and the path in it."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    parsed = urllib.parse.urlparse(artifact_uri)
    destination = server_artifact_destination()
    if parsed.scheme == "mlflow-artifacts" and destination:
        relative = parsed.path.lstrip("/")
        if ".." in relative.split("/"):
            raise ValueError(f"refusing artifact path with '..': {artifact_uri!r}")
        return get_artifact_repository(destination), relative
    return get_artifact_repository(artifact_uri), None


def _listed_size(artifact_uri: str) -> int | None:
    """The size the store lists for a file, without downloading it (None: not listed)."""
    parent, _, name = artifact_uri.rpartition("/")
    try:
        repo, relative = _repository(parent)
        for info in repo.list_artifacts(relative):
            if posixpath.basename(info.path) == name and info.file_size is not None:
                return int(info.file_size)
    except Exception as exc:  # the download that follows says what is wrong
        _LOG.info("cannot list %s: %s", parent, exc)
    return None


def download(artifact_uri: str, dst: str) -> str:
    """Download from the server's own artifact store when the URI is ``mlflow-artifacts:``.

    Inside ``mlflow server --artifacts-destination``, ``mlflow-artifacts:/<path>`` means
    ``<destination>/<path>``; any other URI goes through MLflow's artifact repositories.
    """
    from mlflow.artifacts import download_artifacts

    repo, relative = _repository(artifact_uri)
    if relative is not None:
        return str(repo.download_artifacts(relative, dst))
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
