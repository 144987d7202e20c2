"""The release path: the audited candidate logged as an MLflow model in the audit's run,
registered as a version, and the protected alias asked of the gated registry.

``privacy-gate audit`` with ``mlflow.registered_model`` (the main job) runs it. The alias
is asked through the registry URI given: ``privacygate+sqlite:///...`` on a local store is
the gated store in-process (the class ``mlflow server --registry-store-uri`` runs), so the
answer is the registry's own: a signed, passing audit of this run and these weights, or a
refusal with its reasons, recorded on the version as ``privacy_gate.*`` tags. Any other
registry (a tracking server) is asked through `privacy_gate.mlflow.promote.promote`, which
verifies the audit here first (``PRIVACY_GATE_PUBLIC_KEY``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy_gate.comparison import AuditComparison, PoolMismatchError, compare_reports
from privacy_gate.mlflow.audited_model import log_audited_model, tracking_uri_set
from privacy_gate.mlflow.logging import experiment_id_for, log_comparison, log_report
from privacy_gate.mlflow.promote import promote
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import public_key_from_environment

__all__ = ["GATED_SCHEME", "ReleaseResult", "champion_comparison", "release_candidate"]

GATED_SCHEME = "privacygate"
"""Registry URIs of the gated store (`privacy_gate.mlflow.registry_store`) start so."""


@dataclass(frozen=True)
class ReleaseResult:
    """What the registry answered.

    Attributes:
        allowed: the alias was set.
        refusal: the registry's reasons when it was not (None when allowed).
        tags: the version's tags after the request (the verdict the registry recorded).
    """

    run_id: str
    model_name: str
    version: str
    alias: str
    allowed: bool
    refusal: str | None
    tags: Mapping[str, str]
    registry_uri: str
    comparison: AuditComparison | None = None


@contextlib.contextmanager
def _quiet_refusals() -> Iterator[None]:
    """The in-process store logs each refusal at ERROR for a server's operators; here the
    refusal is the answer, printed by the caller, so that log line is left out."""
    from privacy_gate.mlflow import registry_store

    def keep(record: logging.LogRecord) -> bool:
        return record.msg != registry_store.REFUSAL_LOG

    store_log = logging.getLogger(registry_store.__name__)
    store_log.addFilter(keep)
    try:
        yield
    finally:
        store_log.removeFilter(keep)


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)


def champion_comparison(
    report: AuditReport,
    *,
    tracking_uri: str,
    registry_uri: str,
    registered_model: str,
    alias: str = "champion",
) -> tuple[AuditComparison | None, str | None]:
    """The candidate's audit against the signed audit of the version holding ``alias``;
    ``(None, why)`` when there is none to compare with (no such version yet, no public key
    to verify it, an audit not accepted, another pool)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from privacy_gate.mlflow.fetch import verified_alias_report

    public_key = public_key_from_environment()
    if public_key is None:
        return (
            None,
            f"PRIVACY_GATE_PUBLIC_KEY is not set, so the {alias}'s audit cannot be verified",
        )
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    with tracking_uri_set(tracking_uri):
        try:
            client.get_registered_model(registered_model)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None, f"{registered_model!r} has no versions yet"
        before, why_not = verified_alias_report(
            registered_model, alias, public_key=public_key, client=client
        )
    if before is None:
        return None, why_not
    try:
        return compare_reports(before, report), None
    except PoolMismatchError as exc:
        return None, str(exc)


def _ask_for_alias(
    registry: Any, name: str, version: str, alias: str, *, registry_uri: str
) -> str | None:
    """None when the alias was set, else the registry's (or the client check's) reasons."""
    from mlflow.exceptions import MlflowException

    if not registry_uri.startswith(GATED_SCHEME):
        # a server: verified here first, as `privacy-gate promote` does (it may gate too)
        result = promote(name, version, alias, client=registry)
        return None if result.allowed else "; ".join(result.reasons)
    try:  # the gated registry store itself decides (in-process: the caller prints why)
        with _quiet_refusals():
            registry.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED":
            raise
        return str(exc.message)
    return None


def release_candidate(
    report: AuditReport,
    model: Any,
    input_example: Any,
    *,
    tracking_uri: str,
    registry_uri: str,
    registered_model: str,
    alias: str = "champion",
    experiment: str = "privacy-gate",
    run_name: str | None = None,
    out_dir: str | Path | None = None,
    comparison: AuditComparison | None = None,
) -> ReleaseResult:
    """Log the audit and the candidate into a new run, register it, ask for ``alias``.

    The audit is signed as `log_report` signs (``PRIVACY_GATE_SIGNING_KEY``); the gated
    registry verifies it with ``PRIVACY_GATE_PUBLIC_KEY``. A refusal is a result, not an
    error; a registry that cannot be reached raises MLflow's error. ``comparison`` (with
    the champion) is logged as ``privacy_gate/vs_<alias>/...`` metrics of the run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    # MLflow resolves a version's models:/ source through the global tracking URI too.
    with tracking_uri_set(tracking_uri):
        with mlflow.start_run(
            experiment_id=experiment_id_for(client, experiment, tracking_uri), run_name=run_name
        ) as run:
            audited = log_audited_model(  # pt2 export, its bytes checked and signed
                model,
                input_example=input_example,
                run_id=run.info.run_id,
                client=client,
                expected_weights_sha256=report.audit.model_sha256,
            )
            log_report(report, run_id=run.info.run_id, out_dir=out_dir, client=client,
                       model_sha256=report.audit.model_sha256,
                       model_files=audited.model_files)  # fmt: skip
            if comparison is not None:  # against the champion (`champion_comparison`)
                log_comparison(client, run.info.run_id, comparison, alias)
        run_id = str(run.info.run_id)
        registry = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        _ensure_registered_model(registry, registered_model)
        version = registry.create_model_version(
            registered_model, audited.model_uri, run_id=run_id, model_id=audited.model_id
        )
        refusal = _ask_for_alias(
            registry, registered_model, str(version.version), alias, registry_uri=registry_uri
        )
        tags = registry.get_model_version(registered_model, version.version).tags
    return ReleaseResult(
        run_id=run_id,
        model_name=registered_model,
        version=str(version.version),
        alias=alias,
        allowed=refusal is None,
        refusal=refusal,
        tags=dict(tags),
        registry_uri=registry_uri,
        comparison=comparison,
    )
