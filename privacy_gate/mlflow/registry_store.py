"""Server-side enforcement: a model-registry store that refuses to promote a leaking model.

Run a gated MLflow server (the public key of the auditing side; see ``privacy-gate keys``)::

    export PRIVACY_GATE_PUBLIC_KEY=/etc/privacy-gate/audit_public.pem
    mlflow server --backend-store-uri sqlite:///mlflow.db \\
        --registry-store-uri privacygate+sqlite:///mlflow.db

The registry store URI is ``privacygate+<inner URI>``; the wrapper builds the store MLflow
would build for ``<inner URI>`` and delegates everything to it except the checks below.
MLflow looks the whole URI scheme up exactly (entry points
``mlflow.model_registry_store``), so each supported form is registered:

- ``privacygate+sqlite:///path/mlflow.db``
- ``privacygate+postgresql://user@host/db``, ``privacygate+mysql://...``,
  ``privacygate+mssql://...`` (the default driver of each database);
- ``privacygate:`` alone takes the inner URI from ``PRIVACY_GATE_REGISTRY_INNER_URI``: use
  it for any other inner URI, e.g. one naming a driver (``postgresql+psycopg2://...``).

Settings (environment of the server; `privacy_gate.mlflow.registry_settings` reads them
at start-up and logs them at WARNING: key fingerprint, aliases, policy):

- ``PRIVACY_GATE_PUBLIC_KEY``: path of the Ed25519 public key that verifies audits. When it
  is not set (or cannot be read), every protected promotion is refused.
- ``PRIVACY_GATE_PROTECTED_ALIASES``: comma-separated, case-insensitive; default
  ``champion,production``. Empty or malformed is a start-up error, never "protect nothing".
- ``PRIVACY_GATE_PROMOTION_POLICY_SHA256``: optional; the policy digest an audit must have.
- ``PRIVACY_GATE_ALLOW_PICKLE_MODELS``: ``true`` to accept pickle-format models (their
  forward is code outside their files); default refused.

What is protected (each refusal is an ``MlflowException`` with error code
``PERMISSION_DENIED`` and the reasons; clients see HTTP 403 and the message):

- setting a protected alias, and transitioning a version to ``Staging`` or ``Production``,
  unless the version's run holds ``privacy_gate/report.json`` that is signed by the
  configured key, passed, names that run, and names in ``audit.model_files`` exactly the
  bytes of the version's files (`privacy_gate.mlflow.verification.audit_refusals`, the
  same check as ``privacy-gate promote``). The files are hashed; no model is loaded, no
  pickle is read, no torch is imported. The audit is read from the run's artifacts, never
  trusted from tags.
- The version is pinned while it is verified: its identity (run, source, storage location,
  creation time) is read before the check and again in the one SQL transaction that writes
  the alias and the verdict tags (`privacy_gate.mlflow._compat.commit_verdict`). A rename,
  deletion or re-creation in between rolls the write back and refuses; so neither the
  alias nor a pass tag can land on a version that was not verified.
- Verdict tags: a pass writes ``privacy_gate.status=pass``, ``privacy_gate.report_sha256``,
  ``privacy_gate.promoted_alias`` and ``privacy_gate.verified_by`` with the alias, in one
  transaction; a refusal writes ``status=refused``, ``privacy_gate.refusal`` (the reasons)
  and ``verified_by``, and removes every protected alias the version holds in the same
  transaction (a re-promotion that finds tampering takes the alias away).
- client writes (``set_model_version_tag``, ``create_model_version(tags=...)``) and
  deletions of version tags whose key starts with ``privacy_gate.`` (they would fake a
  verdict); a copy (``copy_model_version``, or a version whose source is
  ``models:/NAME/VERSION``) is a new version and drops the source's ``privacy_gate.`` tags.

The store fails closed: it forwards only the methods of MLflow's registry
``AbstractStore`` it has classified (`FORWARDED`: reads and unprotected writes); the
protected ones are implemented here (`GATED`, including the prompt methods whose MLflow
defaults would set an alias or a version tag on the inner store, ungated). Any other
method (one a newer MLflow adds) is refused with ``PERMISSION_DENIED`` until it is
classified. The inner store must be MLflow's SQL store (the pinned transaction needs it).

What is NOT protected: anyone who writes to the registry database (or the artifact store)
directly bypasses any server; the server's own artifact API lets any client overwrite
files unless the server runs with ``--app-name privacy-gate``
(`privacy_gate.mlflow.server_app`, which refuses writes under registered versions' files);
other aliases (e.g. ``candidate``) and other registry operations (deleting aliases or
versions, registered-model tags) pass through unchecked. Consumers verify the files they
load (``privacy-gate verify``, `privacy_gate.mlflow.load_model`).

If this module fails to import, MLflow only warns and serves without a model registry; the
failure is logged here at ERROR before it is re-raised. An inner URI that is not supported,
or a setting that cannot be read, stops the server at start-up.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

_LOG = logging.getLogger(__name__)

try:
    import hashlib
    import inspect
    import re

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED

    from privacy_gate.errors import InputError
    from privacy_gate.mlflow import _compat
    from privacy_gate.mlflow.promote import (
        PROMOTED_ALIAS_TAG,
        REFUSAL_TAG,
        REPORT_SHA256_TAG,
        STATUS_TAG,
        VERIFIED_BY_TAG,
        refusal_text,
    )
    from privacy_gate.mlflow.registry_methods import FORWARDED, FORWARDED_PRIVATE, GATED
    from privacy_gate.mlflow.registry_settings import (
        DEFAULT_PROTECTED_ALIASES,
        PROTECTED_ALIASES_ENVIRONMENT_VARIABLE,
        PROTECTED_STAGES,
        GateSettings,
        canonical_alias,
        protected_aliases,
    )
    from privacy_gate.mlflow.remedies import refusal_message
    from privacy_gate.mlflow.server_audit import upsert, version_refusals
    from privacy_gate.report import canonical_json
except ImportError as _exc:  # pragma: no cover - exercised in a test through sys.modules
    _LOG.error(
        "privacy-gate registry store failed to import (%s): MLflow will serve WITHOUT a model "
        "registry. HINT: pip install 'privacy-gate[mlflow]' in the server's environment.",
        _exc,
    )
    print(f"ERROR: privacy-gate registry store failed to import: {_exc}", file=sys.stderr)
    raise

__all__ = [
    "DEFAULT_PROTECTED_ALIASES",
    "FORWARDED",
    "GATED",
    "INNER_URI_ENVIRONMENT_VARIABLE",
    "PROTECTED_ALIASES_ENVIRONMENT_VARIABLE",
    "PROTECTED_STAGES",
    "PROTECTED_TAG_PREFIX",
    "PrivacyGateRegistryStore",
    "inner_uri",
    "protected_aliases",
]

SCHEME_PREFIX = "privacygate"
INNER_URI_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_REGISTRY_INNER_URI"
PROTECTED_TAG_PREFIX = "privacy_gate."
REFUSAL_LOG = "privacy-gate registry store refused: %s"
"""The ERROR log line of each refusal (for a server's operators)."""
VERIFIED_BY = "registry-store"
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_COPY_SOURCE = re.compile(r"models:/[^/@]+/[0-9]+")


def inner_uri(store_uri: str, environ: Mapping[str, str] | None = None) -> str:
    """``privacygate+sqlite:///x.db`` -> ``sqlite:///x.db``; ``privacygate:`` -> the env var.

    >>> inner_uri("privacygate+sqlite:///tmp/mlflow.db")
    'sqlite:///tmp/mlflow.db'
    """
    env = os.environ if environ is None else environ
    scheme, sep, rest = store_uri.partition(":")
    if scheme == SCHEME_PREFIX:
        inner = env.get(INNER_URI_ENVIRONMENT_VARIABLE, "")
        if not inner:
            raise _invalid(
                f"The registry store URI {store_uri!r} takes the inner registry URI from "
                f"{INNER_URI_ENVIRONMENT_VARIABLE}, which is not set."
            )
    elif scheme.startswith(SCHEME_PREFIX + "+") and sep:
        inner = f"{scheme[len(SCHEME_PREFIX) + 1 :]}:{rest}"
    else:
        raise _invalid(
            f"{store_uri!r} is not a privacy-gate registry URI: use "
            f"'{SCHEME_PREFIX}+<inner uri>', e.g. 'privacygate+sqlite:///mlflow.db'."
        )
    if inner.split(":", 1)[0].startswith(SCHEME_PREFIX):
        raise _invalid(f"The inner registry URI {inner!r} must not be a privacy-gate URI.")
    return inner


def _invalid(message: str) -> MlflowException:
    _LOG.error("privacy-gate registry store: %s", message)
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _denied(message: str) -> MlflowException:
    _LOG.error(REFUSAL_LOG, message)
    return MlflowException(message, error_code=PERMISSION_DENIED)


def _version_number(version: Any) -> int:
    """A version number as MLflow writes them ('3'); anything else is a 400 that does not
    echo the raw value (it may hold newlines or markup)."""
    text = str(version)
    if isinstance(version, bool) or not _VERSION.fullmatch(text):
        raise _invalid(
            "The model version must be a positive integer such as '3'. Got a value of "
            f"{len(text)} characters that is not one (not shown). HINT: pass the version "
            "number MLflow assigned."
        )
    return int(text)


def _build_inner_store(uri: str, tracking_uri: str | None) -> Any:
    """The store MLflow itself would build for ``uri`` (same registry of schemes)."""
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        builder = _compat.registry_store_builder(uri)
    except UnsupportedModelRegistryStoreURIException as exc:
        # Not re-raised as such: MLflow's server would swallow it and run without registry.
        raise _invalid(f"unsupported inner registry URI {uri!r}: {exc.message}") from None
    params = set(inspect.signature(builder).parameters)
    if "tracking_uri" in params:
        return builder(store_uri=uri, tracking_uri=tracking_uri)
    return builder(store_uri=uri)


class PrivacyGateRegistryStore:
    """Wraps MLflow's registry store for the inner URI; gates promotions (module docs)."""

    def __init__(self, store_uri: str, tracking_uri: str | None = None) -> None:
        self._store_uri = store_uri
        self._tracking_uri = tracking_uri
        try:
            self._settings = GateSettings.from_environment()
        except InputError as exc:
            raise _invalid(f"cannot start: {exc}") from None
        self._inner = _build_inner_store(inner_uri(store_uri), tracking_uri)
        if not _compat.is_sql_registry_store(self._inner):
            raise _invalid(
                f"cannot start: the inner registry {inner_uri(store_uri)!r} is not an SQL "
                "store; the gate pins each verified version in an SQL transaction. HINT: use "
                "privacygate+sqlite:///..., privacygate+postgresql://... or mysql."
            )
        _LOG.warning("%s", self._settings.banner(inner_uri(store_uri)))

    # ---------------------------------------------------------------- delegation

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_settings"):
            raise AttributeError(name)  # e.g. during unpickling
        if name in FORWARDED or name in FORWARDED_PRIVATE:
            return getattr(self._inner, name)
        attribute = getattr(self._inner, name)  # AttributeError where the inner has none
        if not callable(attribute):
            raise AttributeError(
                f"The privacy-gate registry store does not expose {name!r} of the inner store."
            )

        def refused(*_: Any, **__: Any) -> Any:
            raise _denied(
                f"The privacy-gate registry store does not forward {name!r}: it is not one of "
                "the registry methods it has classified as safe or gates itself (a newer "
                "MLflow may have added it). HINT: upgrade privacy-gate, or classify it in "
                "privacy_gate.mlflow.registry_store.FORWARDED or GATED."
            )

        return refused

    @property
    def inner(self) -> Any:
        """The wrapped store (writes through it bypass every check)."""
        return self._inner

    @property
    def settings(self) -> GateSettings:
        return self._settings

    # ---------------------------------------------------------------- gated calls

    def set_registered_model_alias(self, name: str, alias: str, version: Any) -> None:
        number = _version_number(version)
        _compat.validate_alias_name(alias)
        if _canonical(alias) not in self._settings.protected_aliases:
            return upsert(  # type: ignore[no-any-return]
                self._inner.set_registered_model_alias, name=name, alias=alias, version=number
            )
        self._promote(name, number, f"alias {alias!r}", alias=alias, stage=None)
        return None

    def transition_model_version_stage(
        self, name: str, version: Any, stage: str, archive_existing_versions: bool = False
    ) -> Any:
        number = _version_number(version)
        if str(stage).strip().lower() not in PROTECTED_STAGES:
            return self._inner.transition_model_version_stage(
                name=name,
                version=number,
                stage=stage,
                archive_existing_versions=archive_existing_versions,
            )
        self._promote(
            name, number, f"stage {stage!r}", alias=None, stage=stage,
            archive_existing_versions=archive_existing_versions,
        )  # fmt: skip
        return self._inner.get_model_version(name=name, version=number)

    def set_model_version_tag(self, name: str, version: Any, tag: Any) -> None:
        self._refuse_protected_tags([tag.key])
        return upsert(  # type: ignore[no-any-return]
            self._inner.set_model_version_tag, name=name, version=version, tag=tag
        )

    def delete_model_version_tag(self, name: str, version: Any, key: str) -> None:
        self._refuse_protected_tags([key])
        return self._inner.delete_model_version_tag(  # type: ignore[no-any-return]
            name=name, version=version, key=key
        )

    def create_model_version(self, *args: Any, **kwargs: Any) -> Any:
        names = ("name", "source", "run_id", "tags")
        given = {**dict(zip(names, args, strict=False)), **kwargs}
        tags = list(given.get("tags") or ())
        verdict = [t for t in tags if _is_protected_tag(t.key)]
        if verdict and _COPY_SOURCE.fullmatch(str(given.get("source", ""))):
            # MlflowClient.copy_model_version copies every tag: the copy is a new version,
            # verified on its own when promoted, so the source's verdict is not carried.
            _LOG.info("copy of %s: its privacy_gate.* tags are not copied", given.get("source"))
            tags = [t for t in tags if not _is_protected_tag(t.key)]
            args, kwargs = (), {**given, "tags": tags}
        self._refuse_protected_tags([t.key for t in tags])
        return self._inner.create_model_version(*args, **kwargs)

    # MLflow's defaults of these call the INNER store's alias and tag methods, ungated: they
    # are routed through the checks above instead.

    def set_prompt_alias(self, name: str, alias: str, version: Any) -> None:
        return self.set_registered_model_alias(name, alias, version)

    def set_prompt_version_tag(self, name: str, version: Any, key: str, value: str) -> Any:
        self._refuse_protected_tags([key])
        return self._inner.set_prompt_version_tag(name, version, key, value)

    def delete_prompt_version_tag(self, name: str, version: Any, key: str) -> Any:
        self._refuse_protected_tags([key])
        return self._inner.delete_prompt_version_tag(name, version, key)

    def create_prompt_version(self, *args: Any, **kwargs: Any) -> Any:
        tags = kwargs.get("tags")
        if tags is None and len(args) > 3:  # (name, template, description, tags, ...)
            tags = args[3]
        self._refuse_protected_tags(list(tags or {}))
        return self._inner.create_prompt_version(*args, **kwargs)

    def copy_model_version(self, src_mv: Any, dst_name: str) -> Any:
        """The copy is a new version: MLflow's own copy (``AbstractStore``), routed through
        this store's `create_model_version`, which leaves the source's verdict tags out
        when the version is created (never written, then deleted)."""
        return _compat.default_copy_model_version(self, src_mv, dst_name)

    # ---------------------------------------------------------------- checks

    def _refuse_protected_tags(self, keys: Sequence[str]) -> None:
        forged = [k for k in keys if _is_protected_tag(k)]
        if forged:
            raise _denied(
                f"Model version tags {forged} are written only by the privacy-gate registry "
                f"store after it verified a signed audit; tags starting with "
                f"'{PROTECTED_TAG_PREFIX}' cannot be set or deleted by clients."
            )

    def _promote(
        self,
        name: str,
        version: int,
        target: str,
        *,
        alias: str | None,
        stage: str | None,
        archive_existing_versions: bool = False,
    ) -> Any:
        """Verify the pinned version, then write alias and verdict in one transaction that
        re-checks the pin; a refusal is recorded (and protected aliases removed) the same
        way. Returns the pinned identity."""
        pinned = _compat.version_identity(self._inner, name, version)
        if pinned is None:
            self._inner.get_model_version(name=name, version=version)  # MLflow's 404
            raise _invalid(f"Model version {name!r} {version} does not exist.")
        reasons, report = version_refusals(pinned, self._tracking_uri, self._settings)
        prefix = f"Refused to give {name!r} version {version} the {target}"
        if reasons:
            self._record_refusal(name, version, pinned, f"{prefix}: " + "; ".join(reasons) + ".")
            raise _denied(refusal_message(prefix, reasons, report, pinned[0] or None))
        digest = hashlib.sha256(canonical_json(report)).hexdigest()
        verdict = {
            STATUS_TAG: "pass",
            REPORT_SHA256_TAG: digest,
            PROMOTED_ALIAS_TAG: alias if alias is not None else f"stage:{stage}",
            VERIFIED_BY_TAG: VERIFIED_BY,
        }
        committed = self._commit(
            name, version, pinned, set_alias=alias, set_tags=verdict, delete_tags=[REFUSAL_TAG],
            set_stage=stage, archive_existing_versions=archive_existing_versions,
        )  # fmt: skip
        if not committed:
            raise _denied(self._moved(name, version, target))
        return pinned

    def _commit(self, name: str, version: int, pinned: Any, **writes: Any) -> bool:
        """`_compat.commit_verdict`, again when it lost a race to insert the same row."""
        return bool(upsert(_compat.commit_verdict, store=self._inner, name=name,
                           version=version, pinned=pinned, **writes))  # fmt: skip

    @staticmethod
    def _moved(name: str, version: int, target: str) -> str:
        return (
            f"Refused to give {name!r} version {version} the {target}: the version was "
            "renamed, deleted or replaced while its audit was verified, so the verdict "
            "would land on a version that was not checked. HINT: ask again."
        )

    def _record_refusal(self, name: str, version: int, pinned: Any, message: str) -> None:
        """Refusal tags on the pinned version, and its protected aliases removed, at once
        (a failure to record is logged; it does not change the answer)."""
        held = [
            a
            for a in _compat.aliases_of(self._inner, name, version)
            if _canonical(a) in self._settings.protected_aliases
        ]
        try:
            committed = self._commit(
                name,
                version,
                pinned,
                set_alias=None,
                set_tags={STATUS_TAG: "refused", REFUSAL_TAG: refusal_text([message]),
                          VERIFIED_BY_TAG: VERIFIED_BY},
                delete_aliases=held,
            )  # fmt: skip
        except Exception as tag_error:
            _LOG.error("cannot record the refusal on %r version %s: %s", name, version, tag_error)
            return
        if not committed:
            _LOG.error("refusal of %r version %s not recorded: the version moved", name, version)
        elif held:
            _LOG.error("removed the protected alias(es) %s from %r version %s", held, name, version)


def _is_protected_tag(key: Any) -> bool:
    return _canonical(str(key)).startswith(PROTECTED_TAG_PREFIX)


_canonical = canonical_alias
