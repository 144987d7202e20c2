"""Every access of privacy-gate to MLflow's private or version-bound internals, in one
place. `tests/integration/test_compat.py` checks each against the installed MLflow, so an
upgrade that removes one fails there first, loudly."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["client_registry_uri", "registry_store_builder", "server_artifact_destination"]

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
