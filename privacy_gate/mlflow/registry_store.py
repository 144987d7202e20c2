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

Settings (environment of the server):

- ``PRIVACY_GATE_PUBLIC_KEY``: path of the Ed25519 public key that verifies audits. When it
  is not set (or cannot be read), every protected promotion is refused, and that is logged
  at ERROR.
- ``PRIVACY_GATE_PROTECTED_ALIASES``: comma-separated, case-insensitive; default
  ``champion,production``.
- ``PRIVACY_GATE_PROMOTION_POLICY_SHA256``: optional; the policy digest an audit must have.

What is protected (each refusal is an ``MlflowException`` with error code
``PERMISSION_DENIED`` and the reasons; clients see HTTP 403 and the message):

- setting a protected alias, and transitioning a version to ``Staging`` or ``Production``,
  unless the version's run holds ``privacy_gate/report.json`` that is signed by the
  configured key, passed, names that run, and whose weights digest equals the digest
  recomputed here from the version's model files (`privacy_gate.mlflow.verification.
  audit_refusals`, the same check as ``privacy-gate promote``). The audit is read from the
  run's artifacts, never trusted from tags. After a successful check the store itself
  writes the version tags ``privacy_gate.status`` (``pass``),
  ``privacy_gate.report_sha256``, ``privacy_gate.promoted_alias`` (the alias, or
  ``stage:<stage>``) and ``privacy_gate.verified_by``; after a refusal it writes
  ``privacy_gate.status`` = ``refused``, ``privacy_gate.refusal`` (the reasons, as the
  client was told them) and ``privacy_gate.verified_by``, so the registry shows why a
  version was kept out (the tags ``privacy-gate promote`` writes on an ungated registry);
- client writes (``set_model_version_tag``, ``create_model_version(tags=...)``) and
  deletions of version tags whose key starts with ``privacy_gate.`` (they would fake a
  verdict).

The store fails closed: it forwards only the methods of MLflow's registry
``AbstractStore`` it has classified (`FORWARDED`: reads and unprotected writes); the
protected ones are implemented here (`GATED`, including the prompt methods whose MLflow
defaults would set an alias or a version tag on the inner store, ungated). Any other
method (one a newer MLflow adds) is refused with ``PERMISSION_DENIED`` until it is
classified.

Concurrent requests (``--workers N``, and threads in each worker): a first write of a
version tag or alias that loses the race to insert the same row is retried
(`privacy_gate.mlflow.server_audit.upsert`), and the weight digests of one worker take
turns (torch.export's loader is not thread-safe).

What is NOT protected: anyone who writes to the registry database (or the artifact store)
directly bypasses any server; other aliases (e.g. ``candidate``) and other registry
operations (deleting aliases or versions, registered-model tags) pass through unchecked;
a copied version keeps everything but the ``privacy_gate.`` tags. Recomputing the weights
digest loads the version's model with
``mlflow.pytorch.load_model`` (torch needed on the server); that unpickles client-uploaded
files, so it is done only after the signature, status and run of the audit were verified,
and a model that cannot be loaded is refused.

If this module fails to import, MLflow only warns and serves without a model registry; the
failure is logged here at ERROR before it is re-raised. An inner URI that is not supported
stops the server at start-up.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

_LOG = logging.getLogger(__name__)

try:
    import hashlib
    import inspect

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED

    from privacy_gate.mlflow._compat import registry_store_builder
    from privacy_gate.mlflow.promote import (
        PROMOTED_ALIAS_TAG,
        REFUSAL_TAG,
        REPORT_SHA256_TAG,
        STATUS_TAG,
        refusal_text,
    )
    from privacy_gate.mlflow.registry_methods import FORWARDED, FORWARDED_PRIVATE, GATED
    from privacy_gate.mlflow.server_audit import read_run_report, upsert, version_weights_sha256
    from privacy_gate.mlflow.verification import audit_refusals
    from privacy_gate.report import canonical_json
    from privacy_gate.signing import PUBLIC_KEY_ENVIRONMENT_VARIABLE, public_key_from_environment
except ImportError as _exc:  # pragma: no cover - exercised in a test through sys.modules
    _LOG.error(
        "privacy-gate registry store failed to import (%s): MLflow will serve WITHOUT a model "
        "registry. HINT: pip install 'privacy-gate[mlflow]' in the server's environment.",
        _exc,
    )
    print(f"ERROR: privacy-gate registry store failed to import: {_exc}", file=sys.stderr)
    raise

__all__ = [
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
PROTECTED_ALIASES_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_PROTECTED_ALIASES"
POLICY_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_PROMOTION_POLICY_SHA256"
DEFAULT_PROTECTED_ALIASES = ("champion", "production")
PROTECTED_STAGES = ("staging", "production")
PROTECTED_TAG_PREFIX = "privacy_gate."
REFUSAL_LOG = "privacy-gate registry store refused: %s"
"""The ERROR log line of each refusal (for a server's operators)."""
VERIFIED_BY_TAG = "privacy_gate.verified_by"
VERIFIED_BY = "registry-store"


def protected_aliases(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The protected aliases (lower case) from ``PRIVACY_GATE_PROTECTED_ALIASES``."""
    env = os.environ if environ is None else environ
    raw = env.get(PROTECTED_ALIASES_ENVIRONMENT_VARIABLE)
    names = DEFAULT_PROTECTED_ALIASES if raw is None else tuple(raw.split(","))
    return frozenset(n.strip().lower() for n in names if n.strip())


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


def _build_inner_store(uri: str, tracking_uri: str | None) -> Any:
    """The store MLflow itself would build for ``uri`` (same registry of schemes)."""
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        builder = registry_store_builder(uri)
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
        self._inner = _build_inner_store(inner_uri(store_uri), tracking_uri)
        self._local = threading.local()
        if not os.environ.get(PUBLIC_KEY_ENVIRONMENT_VARIABLE):
            _LOG.error(
                "privacy-gate registry store: %s is not set; every promotion to a protected "
                "alias or stage will be REFUSED.",
                PUBLIC_KEY_ENVIRONMENT_VARIABLE,
            )
        _LOG.info(
            "privacy-gate registry store active on %s (protected aliases: %s)",
            inner_uri(store_uri),
            ", ".join(sorted(protected_aliases())),
        )

    # ---------------------------------------------------------------- delegation

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_local"):  # e.g. during unpickling
            raise AttributeError(name)
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

    # ---------------------------------------------------------------- gated calls

    def set_registered_model_alias(self, name: str, alias: str, version: Any) -> None:
        if alias.strip().lower() in protected_aliases():
            report = self._verified_or_refused(name, version, f"alias {alias!r}")
            upsert(self._inner.set_registered_model_alias, name=name, alias=alias, version=version)
            self._write_verdict(name, version, report, alias)
            return None
        return upsert(  # type: ignore[no-any-return]
            self._inner.set_registered_model_alias, name=name, alias=alias, version=version
        )

    def transition_model_version_stage(
        self, name: str, version: Any, stage: str, archive_existing_versions: bool = False
    ) -> Any:
        report = None
        if str(stage).strip().lower() in PROTECTED_STAGES:
            report = self._verified_or_refused(name, version, f"stage {stage!r}")
        result = self._inner.transition_model_version_stage(
            name=name,
            version=version,
            stage=stage,
            archive_existing_versions=archive_existing_versions,
        )
        if report is not None:
            self._write_verdict(name, version, report, f"stage:{stage}")
        return result

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
        tags = kwargs.get("tags")
        if tags is None and len(args) > 3:  # (name, source, run_id, tags, ...)
            tags = args[3]
        self._refuse_protected_tags([t.key for t in tags or ()])
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
        """The copy is a new version: the source's verdict tags do not carry over."""
        copy = self._inner.copy_model_version(src_mv=src_mv, dst_name=dst_name)
        protected = [k for k in copy.tags if k.strip().lower().startswith(PROTECTED_TAG_PREFIX)]
        for key in protected:
            self._inner.delete_model_version_tag(name=copy.name, version=copy.version, key=key)
        if protected:
            copy = self._inner.get_model_version(name=copy.name, version=copy.version)
        return copy

    # ---------------------------------------------------------------- checks

    def _refuse_protected_tags(self, keys: Sequence[str]) -> None:
        if getattr(self._local, "internal", False):
            return
        forged = [k for k in keys if str(k).strip().lower().startswith(PROTECTED_TAG_PREFIX)]
        if forged:
            raise _denied(
                f"Model version tags {forged} are written only by the privacy-gate registry "
                f"store after it verified a signed audit; tags starting with "
                f"'{PROTECTED_TAG_PREFIX}' cannot be set or deleted by clients."
            )

    @contextmanager
    def _internal(self) -> Iterator[None]:
        self._local.internal = True
        try:
            yield
        finally:
            self._local.internal = False

    def _set_own_tags(self, name: str, version: Any, tags: Mapping[str, str]) -> None:
        """Write ``privacy_gate.*`` version tags as the store (clients may not)."""
        from mlflow.entities.model_registry import ModelVersionTag

        with self._internal():
            for key, value in tags.items():
                upsert(
                    self._inner.set_model_version_tag,
                    name=name,
                    version=version,
                    tag=ModelVersionTag(key, value),  # type: ignore[no-untyped-call]
                )

    def _write_verdict(
        self, name: str, version: Any, report: Mapping[str, Any], target: str
    ) -> None:
        """The tags `privacy_gate.mlflow.promote` writes too (same names); the reasons of
        an earlier refusal are removed, they no longer hold."""
        digest = hashlib.sha256(canonical_json(report)).hexdigest()
        self._set_own_tags(
            name,
            version,
            {
                STATUS_TAG: "pass",
                REPORT_SHA256_TAG: digest,
                PROMOTED_ALIAS_TAG: target,
                VERIFIED_BY_TAG: VERIFIED_BY,
            },
        )
        if REFUSAL_TAG in self._inner.get_model_version(name=name, version=version).tags:
            try:  # after the alias was set: a failure (a concurrent pass) is only logged
                with self._internal():
                    self._inner.delete_model_version_tag(
                        name=name, version=version, key=REFUSAL_TAG
                    )
            except MlflowException as exc:
                _LOG.warning("stale refusal tag of %r version %s kept: %s", name, version, exc)

    def _verified_or_refused(self, name: str, version: Any, target: str) -> dict[str, Any]:
        """`_require_passing_audit`; a refusal is recorded on the version before it is
        raised (a failure to record it is logged and does not change the answer)."""
        try:
            return self._require_passing_audit(name, version, target)
        except MlflowException as exc:
            if exc.error_code != "PERMISSION_DENIED":
                raise
            try:
                self._set_own_tags(
                    name,
                    version,
                    {
                        STATUS_TAG: "refused",
                        REFUSAL_TAG: refusal_text([str(exc.message)]),
                        VERIFIED_BY_TAG: VERIFIED_BY,
                    },
                )
            except Exception as tag_error:
                _LOG.error("cannot record the refusal on %r version %s: %s", name, version,
                           tag_error)  # fmt: skip
            raise

    def _require_passing_audit(self, name: str, version: Any, target: str) -> dict[str, Any]:
        """The verified report, or raise PERMISSION_DENIED with every reason."""
        prefix = f"Refused to give {name!r} version {version} the {target}"
        try:
            public_key = public_key_from_environment()
        except Exception as exc:
            raise _denied(f"{prefix}: the audit public key cannot be read ({exc}).") from None
        if public_key is None:
            raise _denied(
                f"{prefix}: the server has no audit public key ({PUBLIC_KEY_ENVIRONMENT_VARIABLE}"
                " is not set), so no audit can be verified."
            )
        model_version = self._inner.get_model_version(name=name, version=version)
        run_id = model_version.run_id or None
        report = read_run_report(run_id, self._tracking_uri) if run_id else None
        policy = os.environ.get(POLICY_ENVIRONMENT_VARIABLE) or None
        # Everything but the weights first: client files are unpickled only for a genuine,
        # passing audit of this run.
        claimed = report.get("audit", {}).get("model_sha256") if report else None
        reasons = audit_refusals(
            report,
            public_key=public_key,
            run_id=run_id,
            model_sha256=claimed if isinstance(claimed, str) else None,
            policy_sha256=policy,
        )
        if not reasons:
            digest = version_weights_sha256(self._inner, name, version)
            reasons = audit_refusals(
                report,
                public_key=public_key,
                run_id=run_id,
                model_sha256=digest,
                policy_sha256=policy,
            )
        if run_id is None:
            reasons.insert(0, "the model version has no run, so it has no audit")
        if reasons or report is None:
            raise _denied(f"{prefix}: " + "; ".join(reasons or ["no audit"]) + ".")
        return dict(report)
