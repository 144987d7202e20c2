"""Log audited models as the auditing side does, for tests: pt2 files and their manifest.

`log_pt2` logs a model into the active run as a ``torch.export`` program; `log_and_register`
logs the audited model, registers it (or, to test tampering, another model in its place)
and returns the manifest of the AUDITED model's stored files, which a signed report binds
(``sign_report(..., model_files=...)``, ``log_report(..., model_files=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from privacy_gate.mlflow.audited_model import logged_model_files
from privacy_gate.model_files import ModelFiles


@dataclass(frozen=True)
class Logged:
    name: str
    version: str
    run_id: str
    files: ModelFiles


def input_example(model: torch.nn.Module) -> Any:
    """One row for a model whose first parameter is a Linear weight."""
    return np.zeros((1, int(next(model.parameters()).shape[-1])), dtype=np.float32)


def log_pt2(model: torch.nn.Module, name: str = "model") -> Any:
    """``mlflow.pytorch.log_model`` as pt2 into the active run (MLflow 3's default)."""
    return mlflow.pytorch.log_model(
        model,
        name=name,
        input_example=input_example(model),
        serialization_format="pt2",
        pip_requirements=["torch"],  # skips the slow requirements inference
    )


def log_and_register(
    model: torch.nn.Module, name: str, registered: torch.nn.Module | None = None
) -> Logged:
    """Log ``model`` (the audited one) in a new run and register it, or ``registered`` in
    its place; the manifest is the audited model's."""
    with mlflow.start_run() as run:
        info = log_pt2(model)
        served = info if registered is None else log_pt2(registered, "served")
    version = mlflow.register_model(served.model_uri, name)
    files = logged_model_files(MlflowClient(), info.model_uri)
    return Logged(name, str(version.version), run.info.run_id, files)
