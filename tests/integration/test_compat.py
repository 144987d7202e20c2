"""Each private or version-bound access of privacy-gate to Lightning, Opacus and MLflow
(`lightning_callbacks._compat`, `privacy_gate.mlflow._compat`), checked against the
installed versions: an upgrade that removes one fails here, by name."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_lightning_train_data_source(namespace: str) -> None:
    from lightning_callbacks._compat import train_data_source

    pl = importlib.import_module(namespace)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    source = train_data_source(trainer, "test")
    assert callable(source.dataloader)


def test_lightning_train_data_source_fails_loudly_when_gone() -> None:
    from lightning_callbacks._compat import train_data_source
    from privacy_gate.errors import InputError

    class NoLoop:
        fit_loop = object()

    with pytest.raises(InputError, match=r"fit_loop\._data_source\.dataloader"):
        train_data_source(NoLoop(), "DPSGD")


def test_opacus_grad_sample_module_release() -> None:
    pytest.importorskip("opacus")
    from opacus import GradSampleModule

    from lightning_callbacks._compat import release_grad_sample_module

    module = GradSampleModule(torch.nn.Linear(3, 2))
    assert callable(getattr(module, "cleanup", None))  # Opacus >= 1.5
    module(torch.randn(4, 3)).sum().backward()
    assert all(p.grad_sample is not None for p in module.parameters())
    release_grad_sample_module(module)
    assert all(getattr(p, "grad_sample", None) is None for p in module.parameters())
    module(torch.randn(4, 3)).sum().backward()  # hooks gone: no new per-sample gradients
    assert all(getattr(p, "grad_sample", None) is None for p in module.parameters())


def test_mlflow_registry_store_builder(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from privacy_gate.mlflow._compat import registry_store_builder

    builder = registry_store_builder(f"sqlite:///{tmp_path}/r.db")
    assert callable(builder)


def test_mlflow_server_artifact_destination_variable() -> None:
    pytest.importorskip("mlflow")
    from mlflow.server.constants import ARTIFACTS_DESTINATION_ENV_VAR

    from privacy_gate.mlflow._compat import SERVER_ARTIFACT_DESTINATION

    assert ARTIFACTS_DESTINATION_ENV_VAR == SERVER_ARTIFACT_DESTINATION


def test_mlflow_client_registry_uri(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from privacy_gate.mlflow._compat import client_registry_uri

    uri = f"sqlite:///{tmp_path}/m.db"
    assert client_registry_uri(MlflowClient(tracking_uri=uri, registry_uri=uri)) == uri


def test_the_private_registry_helpers_the_gated_store_forwards_exist() -> None:
    """MLflow's client calls these on an in-process registry store; if MLflow renames one,
    the gated store would refuse the new name (fail closed) and this test says why."""
    from mlflow.store.model_registry.abstract_store import AbstractStore

    from privacy_gate.mlflow.registry_methods import FORWARDED_PRIVATE

    for name in FORWARDED_PRIVATE:
        assert callable(getattr(AbstractStore, name, None)), name


def test_the_gated_stores_sql_and_server_internals_exist() -> None:
    """What `privacy_gate.mlflow._compat` reaches for the pinned verdict transaction, the
    artifact guard and the copy: each fails here first when an MLflow upgrade moves it."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.store.model_registry.abstract_store import AbstractStore
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion,
        SqlModelVersionTag,
        SqlRegisteredModelAlias,
    )
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    from privacy_gate.mlflow import _compat

    for column in ("run_id", "source", "storage_location", "creation_time", "current_stage"):
        assert hasattr(SqlModelVersion, column), column
    for model in (SqlModelVersionTag, SqlRegisteredModelAlias):
        assert {"name", "version"} <= set(model.__table__.columns.keys())
    assert callable(getattr(SqlAlchemyStore, "_get_query", None))  # workspace-scoped query
    # the gated store's copy relies on the SQL store NOT overriding MLflow's default copy
    assert SqlAlchemyStore.copy_model_version is AbstractStore.copy_model_version
    assert _MLFLOW_SGI_NAME.name == "_MLFLOW_SGI_NAME"
    # MLflow decodes an artifact path repeatedly before writing; the guard judges the same
    assert _compat.mlflow_artifact_path("1/%25256Dodels/x") == "1/models/x"


def test_logging_into_a_run_of_another_experiment_than_the_active_one(tmp_path: Path) -> None:
    """`log_audited_model` enters the audit's run with ``mlflow.start_run(run_id=...)``,
    which MLflow refuses when ``set_experiment`` made another experiment active (the
    callback's MLFlowLogger run in its own experiment); the private
    ``fluent._active_experiment_id`` it clears must exist, and the user's choice stays."""
    import mlflow
    from mlflow.tracking import MlflowClient, fluent

    from privacy_gate.mlflow.audited_model import _in_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("the-loggers"))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        chosen = mlflow.set_experiment("the-users").experiment_id
        assert hasattr(fluent, "_active_experiment_id")
        with _in_run(run.info.run_id):
            mlflow.log_param("inside", "yes")
        assert fluent._active_experiment_id == chosen
    finally:
        mlflow.set_tracking_uri(previous)
    assert client.get_run(run.info.run_id).data.params == {"inside": "yes"}


def test_the_registry_client_under_mlflow_client_ignores_the_prompt_tag(tmp_path: Path) -> None:
    """The webhook receiver reverts aliases of models tagged as prompts through it."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from privacy_gate.mlflow._compat import prompt_blind_registry_client

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("ehr")
    client.create_model_version("ehr", "file:///tmp/x", None)
    client.set_registered_model_tag("ehr", "mlflow.prompt.is_prompt", "true")
    with pytest.raises(Exception, match="not found"):  # what the receiver must not use
        client.set_registered_model_alias("ehr", "champion", "1")
    registry = prompt_blind_registry_client(client)
    registry.set_registered_model_alias("ehr", "champion", "1")
    assert str(registry.get_model_version_by_alias("ehr", "champion").version) == "1"
    registry.set_model_version_tag("ehr", "1", "privacy_gate.status", "refused")
    assert registry.get_model_version("ehr", "1").tags["privacy_gate.status"] == "refused"
    registry.delete_registered_model_alias("ehr", "champion")
