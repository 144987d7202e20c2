"""The audit as an MLflow evaluator plugin, through mlflow.models.evaluate on a real
SQLite tracking store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from tiny_audit import load_data, make_model

from privacy_gate.signing import write_keypair
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.sequential import train_one
from privacy_gate.training.weights import weights_sha256


@pytest.fixture
def _restore_tracking_uri() -> Iterator[None]:
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


@pytest.mark.usefixtures("_restore_tracking_uri")
def test_evaluate_with_the_privacy_gate_evaluator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    monkeypatch.setenv("PRIVACY_GATE_SIGNING_KEY", str(tmp_path / "k.pem"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("privacy-gate-evaluator", (tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("privacy-gate-evaluator")
    data = load_data()
    inputs, labels = data.pool()
    recipe = Recipe(epochs=2, batch_size=16, learning_rate=0.01)
    candidate = train_one(make_model, inputs, labels, np.arange(80), recipe, seed=3)
    members = pd.DataFrame(data.train_inputs.numpy(), columns=[f"x{i}" for i in range(6)])
    members["label"] = data.train_labels.numpy()
    with mlflow.start_run() as run:
        info = mlflow.pytorch.log_model(
            candidate, name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
        result = mlflow.models.evaluate(
            info.model_uri,
            members,
            targets="label",
            model_type="classifier",
            evaluators=["privacy_gate"],
            evaluator_config={"privacy_gate": {
                "model_factory": "tiny_audit:make_model",
                "holdout": (data.holdout_inputs.numpy(), data.holdout_labels.numpy()),
                "recipe": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01},
                "reference_models": 4,
                "policy": {"gate": {"max_patient_auc": 1.0}},
                "patient_ids": data.patient_ids,
            }},
        )  # fmt: skip
    assert "privacy_gate/patient_auc/max" in result.metrics
    logged = MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
    # The only rule, max_patient_auc 1.0, cannot be exceeded, nor its noise floor reach it.
    assert logged.data.tags["privacy_gate.status"] == "pass"
    assert logged.data.metrics["privacy_gate/patient_auc/max"] == pytest.approx(
        result.metrics["privacy_gate/patient_auc/max"]
    )
    client = MlflowClient(tracking_uri=uri)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "privacy_gate")}
    assert "privacy_gate/report.json" in artifacts
    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/privacy_gate/report.json")
    assert report["audit"]["model_sha256"] == weights_sha256(candidate)
    # Signed, the audit binds the evaluated model's stored files (a pickle model here).
    files = report["audit"]["model_files"]
    assert files["format"] == "pickle"
    assert "data/model.pth" in {f["path"] for f in files["files"]}
    assert "signature" in report
