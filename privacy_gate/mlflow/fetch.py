"""Fetch the signed audit logged in MLflow and say whether it may be checked.

``privacy-gate check --mlflow-run ID`` and ``check --model NAME --version V`` read the
``privacy_gate/report.json`` that `privacy_gate.mlflow.log_report` signed into a run, with
the same download and the same verification as promotion (`privacy_gate.mlflow.promote`,
`privacy_gate.mlflow.verification.audit_refusals`), so a CI check and a promotion refuse
for the same reasons. The gate itself is then re-evaluated by the caller, as plain
``check`` does, so the recorded status is not a reason here.

Only ``mlflow-skinny`` is needed (``pip install 'privacy-gate[mlflow-skinny]'``): the
report is downloaded and its signature checked with the public key, and a registered
version's files are hashed and compared with the manifest the audit signed (nothing is
loaded, so no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from privacy_gate.errors import PrivacyGateError
from privacy_gate.mlflow.logging import REPORT_ARTIFACT
from privacy_gate.mlflow.promote import (
    _download_report,
    registered_model_files,
    registry_errors,
)
from privacy_gate.mlflow.verification import audit_refusals
from privacy_gate.report import read_audit_report
from privacy_gate.report_model import AuditReport

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from mlflow.tracking import MlflowClient

__all__ = [
    "AuditFetchError",
    "FetchedAudit",
    "fetch_alias_audit",
    "fetch_model_version_audit",
    "fetch_run_audit",
    "verified_alias_report",
]

_HINT = "check the tracking URI (--tracking-uri or MLFLOW_TRACKING_URI)"


class AuditFetchError(PrivacyGateError, RuntimeError):
    """MLflow could not be asked: server unreachable, run, model or version not found."""


@dataclass(frozen=True)
class FetchedAudit:
    """The audit found in MLflow and why it must not be trusted.

    Attributes:
        report: the report logged in the run (None when there is none); its figures may
            be shown only when ``refusals`` is empty.
        refusals: why the audit is not accepted (missing, unsigned, signed by another
            key, changed, of another run or other weights); empty when it is genuine.
        run_id: the run the audit must belong to.
        source: where it came from, in words.
    """

    report: dict[str, Any] | None
    refusals: list[str] = field(default_factory=list)
    run_id: str = ""
    source: str = ""

    @property
    def artifact_uri(self) -> str:
        """``runs:/<run id>/privacy_gate/report.json``."""
        return f"runs:/{self.run_id}/{REPORT_ARTIFACT}"


def fetch_run_audit(
    run_id: str, *, public_key: Ed25519PublicKey, client: MlflowClient
) -> FetchedAudit:
    """The signed audit of an MLflow run, verified with ``public_key``.

    Raises:
        AuditFetchError: the run does not exist or the server cannot be reached.
    """
    with registry_errors(
        f"read MLflow run {run_id!r}", hint=f"{_HINT} and the run id.", error=AuditFetchError
    ):
        client.get_run(run_id)  # a missing run is an error, not a missing audit
        report = _download_report(client, run_id)
    refusals = audit_refusals(
        report,
        public_key=public_key,
        run_id=run_id,
        model_files=None,
        require_pass=False,
        check_files=False,
        subject=f"MLflow run {run_id}",
        run_name="the checked run",
    )
    return FetchedAudit(report, refusals, run_id, f"MLflow run {run_id}")


def fetch_model_version_audit(
    name: str, version: str, *, public_key: Ed25519PublicKey, client: MlflowClient
) -> FetchedAudit:
    """The signed audit of a registered model version: of its run and of its files.

    Raises:
        AuditFetchError: the model or version does not exist, or the server is unreachable.
    """
    with registry_errors(
        f"read model {name!r} version {version}",
        hint=f"{_HINT}, the model name and the version.",
        error=AuditFetchError,
    ):
        model_version = client.get_model_version(name, version)
        run_id = model_version.run_id or ""
        report = _download_report(client, run_id) if run_id else None
    source = f"model {name!r} version {version} (MLflow run {run_id or 'none'})"
    if not run_id:
        return FetchedAudit(
            None, ["the model version names no run, so it has no audit"], "", source
        )
    files = registered_model_files(client, name, version) if report is not None else None
    refusals = audit_refusals(
        report, public_key=public_key, run_id=run_id, model_files=files, require_pass=False
    )
    return FetchedAudit(report, refusals, run_id, source)


def fetch_alias_audit(
    name: str, alias: str, *, public_key: Ed25519PublicKey, client: MlflowClient
) -> FetchedAudit | None:
    """The signed audit of the version of ``name`` that holds ``alias`` (e.g. the
    champion, to compare a candidate with); None when no version holds it.

    Raises:
        AuditFetchError: the model does not exist, or the server cannot be reached.
    """
    from mlflow.exceptions import MlflowException

    with registry_errors(
        f"read model {name!r}", hint=f"{_HINT} and the model name.", error=AuditFetchError
    ):
        client.get_registered_model(name)  # a missing model is an error, not "no champion"
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            return None
    return fetch_model_version_audit(
        name, str(version.version), public_key=public_key, client=client
    )


def verified_alias_report(
    name: str, alias: str, *, public_key: Ed25519PublicKey, client: MlflowClient
) -> tuple[AuditReport | None, str]:
    """The typed, verified audit of the version of ``name`` holding ``alias`` and where it
    came from; ``(None, why)`` when there is none to compare with (no version holds the
    alias, or its audit is not accepted). Raises as `fetch_alias_audit`."""
    champion = fetch_alias_audit(name, alias, public_key=public_key, client=client)
    if champion is None:
        return None, f"no version of {name!r} holds the alias {alias!r}"
    if champion.refusals or champion.report is None:
        reasons = "; ".join(champion.refusals or ["no privacy audit was found"])
        return None, f"the {alias}'s audit ({champion.source}) is not accepted: {reasons}"
    source = f"The audit of {champion.source}"
    return read_audit_report(champion.report, source=source), champion.source
