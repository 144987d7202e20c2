"""Promote a registered model version only when it has a genuine, passing audit.

`promote` (and ``privacy-gate promote``) finds the version's run, downloads the signed
``privacy_gate/report.json`` logged there by `privacy_gate.mlflow.log_report`, hashes the
registered model's own files (nothing is loaded), and asks
`privacy_gate.mlflow.verification.audit_refusals` whether the audit allows promotion: a
valid signature by the configured public key, status ``pass``, this version's run, exactly
the audited files (`privacy_gate.model_files`) and (optionally) the required policy. Only
then is the alias set. A tag
typed by hand (``privacy_gate.status=pass``) is never read as a verdict.

Version tags written: ``privacy_gate.status`` (``pass`` or ``refused``) and, on success,
``privacy_gate.report_sha256`` and ``privacy_gate.promoted_alias``; on refusal
``privacy_gate.refusal`` (the reasons, at most 5000 characters).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privacy_gate.errors import InputError, PrivacyGateError, ReportError
from privacy_gate.mlflow._compat import client_registry_uri
from privacy_gate.mlflow.logging import REPORT_ARTIFACT, report_sha256
from privacy_gate.mlflow.verification import audit_refusals
from privacy_gate.model_files import ModelFiles, manifest_of
from privacy_gate.report import parse_report_json
from privacy_gate.report_model import AuditReport, Violation
from privacy_gate.signing import (
    PUBLIC_KEY_ENVIRONMENT_VARIABLE,
    load_public_key,
    public_key_from_environment,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from mlflow.tracking import MlflowClient

__all__ = [
    "PROMOTED_ALIAS_TAG",
    "REFUSAL_TAG",
    "REFUSAL_TAG_LENGTH",
    "REPORT_SHA256_TAG",
    "STATUS_TAG",
    "VERIFIED_BY_TAG",
    "PromotionError",
    "PromotionResult",
    "client_for",
    "promote",
    "refusal_text",
]

STATUS_TAG = "privacy_gate.status"
REPORT_SHA256_TAG = "privacy_gate.report_sha256"
PROMOTED_ALIAS_TAG = "privacy_gate.promoted_alias"
REFUSAL_TAG = "privacy_gate.refusal"
VERIFIED_BY_TAG = "privacy_gate.verified_by"
"""Who wrote the verdict: ``registry-store`` (blocks) or ``webhook-receiver`` (reverts)."""
REFUSAL_TAG_LENGTH = 5000
_INSTALL_HINT = "HINT: pip install 'privacy-gate[mlflow]'."
_log = logging.getLogger(__name__)


class PromotionError(PrivacyGateError, RuntimeError):
    """The registry could not be asked: server unreachable, model or version not found."""


@dataclass(frozen=True)
class PromotionResult:
    """The outcome of `promote`.

    Attributes:
        allowed: True when the alias was set.
        reasons: why promotion was refused (empty when allowed).
        report: the audit report found for the version (None when there was none).
        run_id: the version's run (None when it names none).
    """

    allowed: bool
    reasons: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None
    run_id: str | None = None

    @functools.cached_property
    def audit_report(self) -> AuditReport | None:
        """The report as the typed model (read once); None without one or when it cannot
        be read."""
        if self.report is None:
            return None
        try:
            return AuditReport.from_dict(self.report)
        except ReportError:
            return None

    @property
    def violations(self) -> tuple[Violation, ...]:
        """The gate rules the audit violated (from the report; empty without one)."""
        typed = self.audit_report
        return () if typed is None else typed.decision.violations


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """An ``MlflowClient`` for ``tracking_uri`` (MLflow's default when None)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError(f"Promotion needs the mlflow package. {_INSTALL_HINT}") from exc
    return MlflowClient(tracking_uri=tracking_uri)


def _client(client: MlflowClient | None) -> MlflowClient:
    return client if client is not None else client_for()


def _public_key(public_key: Ed25519PublicKey | str | Path | bytes | None) -> Ed25519PublicKey:
    if public_key is None:
        key = public_key_from_environment()
        if key is None:
            raise InputError(
                "The 'public_key' parameter of promote must be the auditing side's Ed25519 "
                f"public key. Got None instead, and {PUBLIC_KEY_ENVIRONMENT_VARIABLE} is "
                "unset. HINT: pass --public-key PATH or set "
                f"{PUBLIC_KEY_ENVIRONMENT_VARIABLE}."
            )
        return key
    if isinstance(public_key, (str, Path, bytes)):
        return load_public_key(public_key)
    return public_key


def _download_report(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The run's ``privacy_gate/report.json``; None when absent or not a JSON object."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, REPORT_ARTIFACT, tmp)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            _log.info("No audit report in run %s: %s", run_id, exc)
            return None
        try:
            report = parse_report_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _log.warning("The audit report of run %s is unreadable: %s", run_id, exc)
            return None
    return report if isinstance(report, dict) else None


def client_download(client: MlflowClient, artifact_uri: str, dst: str) -> str:
    """Download ``artifact_uri`` into ``dst`` through the client's own URIs (never MLflow's
    global ones, which would outlive the call); the local path."""
    from mlflow.artifacts import download_artifacts

    return str(
        download_artifacts(
            artifact_uri=artifact_uri,
            dst_path=dst,
            tracking_uri=str(client.tracking_uri),
            registry_uri=client_registry_uri(client),
        )
    )


def download_version(client: MlflowClient, name: str, version: str, dst: str) -> str:
    """Download a registered version's files into ``dst``; the local model folder."""
    return client_download(client, client.get_model_version_download_uri(name, version), dst)


def registered_model_files(client: MlflowClient, name: str, version: str) -> ModelFiles | None:
    """The manifest of a registered version's files as served now; None when they cannot
    be read (that refuses: unreadable files are not the audited ones). Nothing is loaded."""
    try:
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            return manifest_of(download_version(client, name, version, tmp))
    except Exception as exc:  # any failure refuses
        _log.warning("Cannot read the files of %s version %s: %s", name, version, exc)
        return None


@contextlib.contextmanager
def registry_errors(
    doing: str, *, hint: str, error: type[PrivacyGateError] = PrivacyGateError
) -> Iterator[None]:
    """MLflow's errors (long, multi-line) as one-line ``error``s: "Cannot <doing>: ..."."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        message = lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."
        raise error(f"Cannot {doing}: {message} HINT: {hint}") from exc


def refusal_text(reasons: list[str]) -> str:
    """The reasons as one tag value, cut to MLflow-friendly ``REFUSAL_TAG_LENGTH``."""
    text = "; ".join(reasons)
    if len(text) > REFUSAL_TAG_LENGTH:
        text = text[: REFUSAL_TAG_LENGTH - 3] + "..."
    return text


def _denied(action: Any) -> str | None:
    """Run a registry write; the message if a gated registry denies it, else None."""
    from mlflow.exceptions import MlflowException

    try:
        action()
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED":
            raise
        return str(exc.message)
    return None


def _write_tags(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Write verdict tags; a gated registry (the registry-store plugin) refuses client
    writes of ``privacy_gate.*`` tags and records its own verdict instead."""
    for key, value in tags.items():
        denied = _denied(lambda k=key, v=value: client.set_model_version_tag(name, version, k, v))
        if denied is not None:
            _log.info("The registry keeps its own verdict tags (%s); not writing %s.", denied, key)
            return


def promote(
    name: str,
    version: str | int,
    alias: str,
    *,
    public_key: Ed25519PublicKey | str | Path | bytes | None = None,
    policy_sha256: str | None = None,
    client: MlflowClient | None = None,
    allow_pickle: bool = False,
) -> PromotionResult:
    """Set ``alias`` on a registered model version if, and only if, its audit allows it.

    Args:
        name: the registered model's name.
        version: the model version to promote.
        alias: the alias to set (e.g. ``champion``).
        public_key: the auditing side's public key (a key, or a PEM path or bytes);
            ``PRIVACY_GATE_PUBLIC_KEY`` when None.
        policy_sha256: the policy the audit must have used (None: any policy).
        client: the client to use (its tracking and registry URIs); ``MlflowClient()``
            when None; the model's files are downloaded through its URIs too.
        allow_pickle: accept a pickle-format model, whose forward is code outside its
            files (`privacy_gate.model_files`); refused by default.

    Returns:
        A `PromotionResult`; when refused, the version is tagged with the reasons and the
        alias is left as it was.

    Raises:
        InputError: no public key, or one that cannot be loaded.
        PromotionError: the version does not exist, or the server cannot be reached.
    """
    key = _public_key(public_key)
    mlflow_client = _client(client)
    version = str(version)
    with registry_errors(
        f"promote {name!r} version {version}",
        hint="check the tracking URI (--tracking-uri or MLFLOW_TRACKING_URI), the model name "
        "and the version.",
        error=PromotionError,
    ):
        return _promote(mlflow_client, name, version, alias, key, policy_sha256, allow_pickle)


def _promote(
    mlflow_client: MlflowClient,
    name: str,
    version: str,
    alias: str,
    key: Ed25519PublicKey,
    policy_sha256: str | None,
    allow_pickle: bool,
) -> PromotionResult:
    model_version = mlflow_client.get_model_version(name, version)
    run_id = model_version.run_id or None
    report = _download_report(mlflow_client, run_id) if run_id else None
    files = registered_model_files(mlflow_client, name, version) if report is not None else None
    if run_id is None:
        reasons = ["the model version names no run, so it has no audit"]
    else:
        reasons = audit_refusals(
            report,
            public_key=key,
            run_id=run_id,
            model_files=files,
            policy_sha256=policy_sha256,
            allow_pickle=allow_pickle,
        )
    if report is not None and not reasons:
        denied = _denied(lambda: mlflow_client.set_registered_model_alias(name, alias, version))
        if denied is None:
            _write_tags(
                mlflow_client,
                name,
                version,
                {STATUS_TAG: "pass", REPORT_SHA256_TAG: report_sha256(report),
                 PROMOTED_ALIAS_TAG: alias},
            )  # fmt: skip
            return PromotionResult(allowed=True, reasons=[], report=report, run_id=run_id)
        reasons = [f"the registry refused the alias: {denied}"]
    _write_tags(
        mlflow_client,
        name,
        version,
        {STATUS_TAG: "refused", REFUSAL_TAG: refusal_text(reasons)},
    )
    return PromotionResult(allowed=False, reasons=reasons, report=report, run_id=run_id)
