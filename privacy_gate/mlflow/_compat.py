"""Every access of privacy-gate to MLflow's private or version-bound internals, in one
place. `tests/integration/test_compat.py` checks each against the installed MLflow, so an
upgrade that removes one fails there first, loudly."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "VersionIdentity",
    "aliases_of",
    "client_registry_uri",
    "commit_verdict",
    "default_copy_model_version",
    "is_sql_registry_store",
    "mlflow_artifact_path",
    "prompt_blind_registry_client",
    "registered_locations",
    "registry_store_builder",
    "server_artifact_destination",
    "server_gateway_interface",
    "server_stores",
    "validate_alias_name",
    "version_identity",
]

SERVER_ARTIFACT_DESTINATION = "_MLFLOW_SERVER_ARTIFACT_DESTINATION"
"""The variable ``mlflow server`` sets to its ``--artifacts-destination`` (private,
``mlflow.server.constants.ARTIFACTS_DESTINATION_ENV_VAR``)."""


def registry_store_builder(uri: str) -> Any:
    """The function MLflow itself calls to build the registry store of ``uri``
    (``mlflow.tracking._model_registry.utils._get_store_registry``, private)."""
    from mlflow.tracking._model_registry.utils import _get_store_registry

    return _get_store_registry().get_store_builder(uri)  # type: ignore[no-untyped-call]


def server_artifact_destination() -> str | None:
    """Inside ``mlflow server --artifacts-destination``: that destination, else None."""
    return os.environ.get(SERVER_ARTIFACT_DESTINATION) or None


def client_registry_uri(client: Any) -> str | None:
    """The registry URI an ``MlflowClient`` was built with (``client._registry_uri``,
    private; MLflow has no public getter)."""
    return getattr(client, "_registry_uri", None)


def prompt_blind_registry_client(client: Any) -> Any:
    """The registry client under an ``MlflowClient`` (``client._get_registry_client()``,
    private). ``MlflowClient`` answers "not found" for any model tagged
    ``mlflow.prompt.is_prompt`` (its ``_raise_if_prompt``), whatever the tag's value, when
    setting or deleting an alias or a version tag or asking for a download URI, while the
    server still serves that model's aliases: the webhook receiver must see and revert
    them too, so it talks to the registry through this client, which has no such check."""
    return client._get_registry_client()


# ------------------------------------------------------------------ the gated store's SQL
# The gated registry pins the version it verified and writes its verdict in ONE
# transaction of MLflow's SQL registry store, re-reading the version's row there: MLflow's
# public store API has a transaction per call, so a rename between two calls would move the
# verdict to another version (ARCHITECTURE.md, docs/explanation/registry-security.md).

VersionIdentity = tuple[str | None, str | None, str | None, int | None]
"""(run id, source, storage location, creation time) of a version row: what it IS, as
opposed to its (name, version) address, which renames reuse."""


def is_sql_registry_store(store: Any) -> bool:
    """True for MLflow's SQLAlchemy registry store (SQLite, PostgreSQL, MySQL, MSSQL)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    return isinstance(store, SqlAlchemyStore)


def _version_query(store: Any, session: Any, name: str, version: int) -> Any:
    from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

    query = store._get_query(session, SqlModelVersion)  # workspace-scoped where enabled
    return query.filter(
        SqlModelVersion.name == name,
        SqlModelVersion.version == version,
        SqlModelVersion.current_stage != STAGE_DELETED_INTERNAL,
    )


def _identity(row: Any) -> VersionIdentity:
    return (row.run_id, row.source, row.storage_location, row.creation_time)


def _identity_in_database(
    store: Any, session: Any, name: str, version: int
) -> VersionIdentity | None:
    """The version's identity as the database holds it now, its row locked (``FOR
    UPDATE``). Columns, not the ORM entity: an entity query answers a (name, version) the
    session already loaded from its identity map, so a version renamed in under the same
    address would look like the one read before."""
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

    columns = (
        SqlModelVersion.run_id,
        SqlModelVersion.source,
        SqlModelVersion.storage_location,
        SqlModelVersion.creation_time,
    )
    query = _version_query(store, session, name, version).with_entities(*columns)
    row = query.with_for_update().one_or_none()
    return None if row is None else (row[0], row[1], row[2], row[3])


def version_identity(store: Any, name: str, version: int) -> VersionIdentity | None:
    """The identity of the live version at (name, version), or None when there is none."""
    with store.ManagedSessionMaker() as session:
        row = _version_query(store, session, name, version).one_or_none()
        return None if row is None else _identity(row)


def commit_verdict(
    store: Any,
    name: str,
    version: int,
    pinned: VersionIdentity,
    *,
    set_alias: str | None,
    set_tags: Mapping[str, str],
    delete_tags: Sequence[str] = (),
    delete_aliases: Sequence[str] = (),
    set_stage: str | None = None,
    archive_existing_versions: bool = False,
) -> bool:
    """Write a verdict in one transaction, only onto the version that was verified.

    The writes go first (on SQLite the first write takes the database's write lock; on
    PostgreSQL the rows' foreign keys lock the version against a rename), then the
    version's row is read again with ``FOR UPDATE``: when its identity is not ``pinned``
    (renamed, deleted or replaced since it was verified) everything is rolled back and
    False is returned. True when committed. ``set_stage`` moves the version to a stage as
    MLflow's own ``transition_model_version_stage`` does (archiving the stage's other
    versions when asked), in the same transaction.
    """
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersionTag,
        SqlRegisteredModelAlias,
    )

    class _Moved(MlflowException):  # the session maker rolls back on MlflowException
        def __init__(self) -> None:
            super().__init__("the version moved")

    try:
        with store.ManagedSessionMaker(read_only=False) as session:
            row = _version_query(store, session, name, version).one_or_none()
            if row is None or _identity(row) != pinned:
                raise _Moved
            workspace = getattr(row, "workspace", None)
            extra = {} if workspace is None else {"workspace": workspace}
            if set_alias is not None:
                session.merge(
                    SqlRegisteredModelAlias(name=name, alias=set_alias, version=version, **extra)
                )
            for key, value in set_tags.items():
                session.merge(
                    SqlModelVersionTag(name=name, version=version, key=key, value=value, **extra)
                )
            session.flush()
            for key in delete_tags:
                session.query(SqlModelVersionTag).filter_by(
                    name=name, version=version, key=key
                ).delete()
            for alias in delete_aliases:
                session.query(SqlRegisteredModelAlias).filter_by(
                    name=name, alias=alias, version=version
                ).delete()
            if set_stage is not None:
                _move_to_stage(store, session, row, set_stage, archive_existing_versions)
            session.flush()
            if _identity_in_database(store, session, name, version) != pinned:
                raise _Moved
    except _Moved:
        return False
    except (sqlalchemy.exc.IntegrityError, MlflowException) as exc:
        # MLflow's session maker wraps database errors in MlflowException (cause kept)
        lost = isinstance(exc, sqlalchemy.exc.IntegrityError) or isinstance(
            exc.__cause__, sqlalchemy.exc.IntegrityError
        )
        if not lost or version_identity(store, name, version) == pinned:
            raise  # a lost race to insert the same row: the caller retries (upsert)
        return False  # the version's row went away under the writes
    return True


def _move_to_stage(store: Any, session: Any, row: Any, stage: str, archive: bool) -> None:
    """MLflow's stage transition on the locked row (`commit_verdict`)."""
    from mlflow.entities.model_registry.model_version_stages import (
        STAGE_ARCHIVED,
        get_canonical_stage,
    )
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
    from mlflow.utils.time import get_current_time_millis

    canonical = get_canonical_stage(stage)  # type: ignore[no-untyped-call]
    now = get_current_time_millis()  # type: ignore[no-untyped-call]
    if archive:
        others = store._get_query(session, SqlModelVersion).filter(
            SqlModelVersion.name == row.name,
            SqlModelVersion.version != row.version,
            SqlModelVersion.current_stage == canonical,
        )
        for other in others.all():
            other.current_stage, other.last_updated_time = STAGE_ARCHIVED, now
    row.current_stage, row.last_updated_time = canonical, now
    row.registered_model.last_updated_time = now


def aliases_of(store: Any, name: str, version: int) -> list[str]:
    """The aliases that point at (name, version) now."""
    from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias

    with store.ManagedSessionMaker() as session:
        rows = session.query(SqlRegisteredModelAlias).filter_by(name=name, version=version)
        return [str(r.alias) for r in rows]


def registered_locations(store: Any) -> list[tuple[str, int, str]]:
    """(name, version, location) of every live version, for each of its storage location
    and source: the artifact paths a registered model's files live under."""
    from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

    found: list[tuple[str, int, str]] = []
    with store.ManagedSessionMaker() as session:
        rows = session.query(
            SqlModelVersion.name,
            SqlModelVersion.version,
            SqlModelVersion.storage_location,
            SqlModelVersion.source,
        ).filter(SqlModelVersion.current_stage != STAGE_DELETED_INTERNAL)
        for name, version, location, source in rows:
            found.extend((name, version, uri) for uri in (location, source) if uri)
    return found


def validate_alias_name(alias: str) -> None:
    """MLflow's own alias-name rules (private validators), before any work is done.
    MLflow 3.18 renamed them (``_validate_model_alias_name`` -> ``_validate_alias_name``,
    ``..._reserved`` likewise); either name is taken."""
    from mlflow.utils import validation

    names = (
        ("_validate_model_alias_name", "_validate_alias_name"),
        ("_validate_model_alias_name_reserved", "_validate_alias_name_reserved"),
    )
    for old, new in names:
        validate: Any = getattr(validation, old, None) or getattr(validation, new)
        validate(alias)


# ------------------------------------------------------------------ the server app


def server_gateway_interface() -> str | None:
    """``uvicorn``, ``gunicorn`` or ``waitress``: what ``mlflow server`` runs the app with
    (``mlflow.environment_variables._MLFLOW_SGI_NAME``, private)."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    return _MLFLOW_SGI_NAME.get()  # type: ignore[no-any-return, no-untyped-call]


def server_stores() -> tuple[Any, Any]:
    """The server's (tracking store, registry store) as its request handlers use them
    (``mlflow.server.handlers._get_tracking_store`` / ``_get_model_registry_store``)."""
    from mlflow.server.handlers import _get_model_registry_store, _get_tracking_store

    return _get_tracking_store(), _get_model_registry_store()


def mlflow_artifact_path(path: str) -> str:
    """The artifact path MLflow's own handlers write for a routed ``path``: they decode it
    repeatedly (``mlflow.utils.uri.validate_path_is_safe``), so a guard must judge the
    same string. Raises ``MlflowException`` where MLflow refuses the path itself."""
    from mlflow.utils.uri import validate_path_is_safe

    return str(validate_path_is_safe(path))  # type: ignore[no-untyped-call]


def default_copy_model_version(store: Any, src_mv: Any, dst_name: str) -> Any:
    """MLflow's own ``copy_model_version`` (``AbstractStore``'s, which the SQL store does
    not override) run on ``store``, so that its registered-model and version creation go
    through ``store``'s methods (the gated store's checks) rather than the inner store's."""
    from mlflow.store.model_registry.abstract_store import AbstractStore

    return AbstractStore.copy_model_version(store, src_mv, dst_name)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def fluent_experiment_cleared() -> Iterator[None]:
    """No fluent active experiment inside: ``mlflow.start_run(run_id=...)`` refuses a run
    of another experiment than the one ``mlflow.set_experiment`` made active (a user's
    session, or a Trainer's MLFlowLogger run in another experiment); the caller's choice
    is put back afterwards. MLflow keeps it in ``fluent._active_experiment_id``."""
    from mlflow.tracking import fluent

    previous = getattr(fluent, "_active_experiment_id", None)
    fluent._active_experiment_id = None
    try:
        yield
    finally:
        fluent._active_experiment_id = previous
