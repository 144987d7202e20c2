"""Where models are consumed: verify the served files against the signed audit first.

The registry gate checks a version when an alias is asked for; files changed afterwards in
the storage behind the registry would still be served under that alias. Deployment
therefore loads through one of:

- ``privacy-gate verify models:/NAME@ALIAS`` (`verify_model`): exit 0 only when the files
  served now are exactly the ones the signed, passing audit names; otherwise exit 1 with
  the files that differ;
- `load_model` (``privacy_gate.mlflow.load_model``): downloads once, verifies those bytes,
  and only then deserialises the same local copy (no second download to swap).

A verification that finds the files changed asks the registry for the alias again: the
gated registry re-verifies, refuses, removes the protected alias and records why on the
version. On an ungated registry this side removes the alias and writes the refusal tags.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privacy_gate.errors import InputError, PrivacyGateError
from privacy_gate.mlflow.promote import (
    REFUSAL_TAG,
    STATUS_TAG,
    PromotionError,
    _denied,
    _download_report,
    download_version,
    refusal_text,
    registry_errors,
)
from privacy_gate.mlflow.verification import audit_refusals, signed_model_files
from privacy_gate.model_files import ModelFiles, differences, manifest_of
from privacy_gate.signing import PUBLIC_KEY_ENVIRONMENT_VARIABLE, public_key_from_environment

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from mlflow.tracking import MlflowClient

__all__ = ["TamperedModelError", "Verification", "load_model", "parse_model_uri", "verify_model"]

_LOG = logging.getLogger(__name__)
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w\-]+)|/(?P<version>[1-9][0-9]*))")


class TamperedModelError(PrivacyGateError):
    """The served model is not the audited one (or has no valid audit): not loaded."""


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify_model`.

    Attributes:
        ok: the served files are the audited ones and the audit is genuine and passing.
        reasons: why not (empty when ok).
        changed_files: the files that differ from the signed manifest, one line each.
        revoked: the protected alias was taken away (by the gated registry or here).
    """

    uri: str
    name: str
    version: str
    alias: str | None
    ok: bool
    reasons: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    revoked: bool = False


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    match = _URI.fullmatch(uri.strip())
    if match is None:
        raise InputError(
            f"The model URI must be 'models:/NAME@ALIAS' or 'models:/NAME/VERSION'. Got "
            f"{uri[:120]!r}. HINT: e.g. models:/ehr-mlp@champion."
        )
    return match["name"], match["alias"], match["version"]


def _public_key(public_key: Ed25519PublicKey | None) -> Ed25519PublicKey:
    key = public_key if public_key is not None else public_key_from_environment()
    if key is None:
        raise InputError(
            "Verifying a model needs the auditing side's public key. Got none, and "
            f"{PUBLIC_KEY_ENVIRONMENT_VARIABLE} is unset. HINT: pass --public-key PATH or set "
            f"{PUBLIC_KEY_ENVIRONMENT_VARIABLE}."
        )
    return key


def _verify_into(
    uri: str,
    dst: str,
    *,
    public_key: Ed25519PublicKey,
    client: MlflowClient,
    allow_pickle: bool = False,
) -> tuple[Verification, str | None]:
    """Verify the served files, downloaded into ``dst``; (verification, local folder)."""
    name, alias, version = parse_model_uri(uri)
    with registry_errors(
        f"read {uri}", hint="check the tracking URI, the model name and alias or version.",
        error=PromotionError,
    ):  # fmt: skip
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias is not None
            else client.get_model_version(name, str(version))
        )
        number, run_id = str(mv.version), mv.run_id or None
        report = _download_report(client, run_id) if run_id else None
        local = download_version(client, name, number, dst)
    found: ModelFiles | None = manifest_of(local)
    reasons = audit_refusals(
        report, public_key=public_key, run_id=run_id, model_files=found, allow_pickle=allow_pickle
    )
    if run_id is None:
        reasons.insert(0, "the model version names no run, so it has no audit")
    signed = signed_model_files(report) if isinstance(report, dict) else None
    changed = differences(signed, found) if isinstance(signed, ModelFiles) and found else []
    result = Verification(uri, name, number, alias, not reasons, reasons, changed)
    return result, local


def verify_model(
    uri: str,
    *,
    public_key: Ed25519PublicKey | None = None,
    client: MlflowClient | None = None,
    revoke: bool = True,
    allow_pickle: bool = False,
) -> Verification:
    """Compare the files served for ``uri`` with the signed audit's manifest.

    Args:
        uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        public_key: the auditing side's public key (``PRIVACY_GATE_PUBLIC_KEY`` when None).
        client: whose tracking and registry URIs to use (``MlflowClient()`` when None).
        revoke: when the files changed and the URI names an alias, take the alias away
            (module docs).
        allow_pickle: accept a pickle-format model (refused by default: its forward is
            code outside its files).
    """
    from mlflow.tracking import MlflowClient

    key = _public_key(public_key)
    mlflow_client = client if client is not None else MlflowClient()
    with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
        result, _ = _verify_into(
            uri, tmp, public_key=key, client=mlflow_client, allow_pickle=allow_pickle
        )
    if result.ok or not result.changed_files or not revoke or result.alias is None:
        return result
    return _revoke(mlflow_client, result)


def _revoke(client: MlflowClient, result: Verification) -> Verification:
    """The files changed: ask for the alias again (a gated registry refuses and removes
    it); an ungated registry says yes, so the alias is removed and the refusal written."""
    name, version, alias = result.name, result.version, str(result.alias)
    with registry_errors(f"revoke {alias!r} of {name!r}", hint="check the tracking URI."):
        denied = _denied(lambda: client.set_registered_model_alias(name, alias, version))
        if (
            denied is None
            and "privacy_gate.verified_by" in client.get_model_version(name, version).tags
        ):
            _LOG.error(
                "%s: the gated registry found the files unchanged, this side found them "
                "changed; the alias is kept. Check what the two sides download.",
                result.uri,
            )
            return result
        if denied is None:
            client.delete_registered_model_alias(name, alias)
            reason = "the served files are not the audited ones: " + "; ".join(
                result.changed_files[:5]
            )
            for key, value in {STATUS_TAG: "refused", REFUSAL_TAG: refusal_text([reason])}.items():
                client.set_model_version_tag(name, version, key, value)
    return Verification(
        result.uri, name, version, result.alias, False, result.reasons, result.changed_files, True
    )


def load_model(
    uri: str,
    *,
    public_key: Ed25519PublicKey | None = None,
    client: MlflowClient | None = None,
    allow_pickle: bool = False,
    **load_kwargs: Any,
) -> Any:
    """``mlflow.pytorch.load_model`` of ``uri`` after verifying the very bytes it loads.

    Raises:
        TamperedModelError: the files are not the audited ones, or the audit is not a
            genuine, passing one by the public key; nothing was deserialised.
    """
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    key = _public_key(public_key)
    mlflow_client = client if client is not None else MlflowClient()
    with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
        result, local = _verify_into(
            uri, tmp, public_key=key, client=mlflow_client, allow_pickle=allow_pickle
        )
        if not result.ok or local is None:
            raise TamperedModelError(
                f"Refusing to load {uri} ({result.name!r} version {result.version}): "
                + "; ".join(result.reasons)
                + ". Nothing was deserialised. HINT: run 'privacy-gate verify "
                f"{uri}' and re-release an audited model."
            )
        return mlflow.pytorch.load_model(str(Path(local)), **load_kwargs)
