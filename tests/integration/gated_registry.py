"""A gated MLflow registry for tests and benchmarks: the server, audited versions, a load.

- `start_gated_server`: ``mlflow server`` with ``--registry-store-uri privacygate+<backend>``
  on one backend (SQLite by default, or a ``postgresql://`` database) and the audit
  public key; yields a `Gated` (its client and the signing keys).
- `register`: log a tiny torch model into a new run, optionally with a signed
  ``privacy_gate/report.json`` (passing, failing, another key or run, tampered weights),
  and register it as a version of `MODEL`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import requests
import torch
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer, start_mlflow_server

from privacy_gate import audit, make_signals, records_from_columns
from privacy_gate.config import parse_config
from privacy_gate.report import SCHEMA_VERSION
from privacy_gate.signing import load_private_key, sign_report, write_keypair
from privacy_gate.training.weights import weights_sha256

MODEL = "gated-model"
REQUEST_TIMEOUT_S = 60


@dataclass(frozen=True)
class Gated:
    server: MlflowServer
    client: MlflowClient
    private: Any
    other_private: Any


@contextlib.contextmanager
def start_gated_server(
    tmp: Path, *, backend_store_uri: str | None = None, workers: int = 1
) -> Iterator[Gated]:
    """A gated server (tracking and registry on one backend) with `MODEL` registered."""
    write_keypair(tmp / "audit.pem", tmp / "audit.pub.pem")
    write_keypair(tmp / "other.pem", tmp / "other.pub.pem")
    server_dir = tmp / "server"
    backend = backend_store_uri or f"sqlite:///{server_dir / 'mlflow.db'}"
    with start_mlflow_server(
        server_dir,
        backend_store_uri=backend,
        workers=workers,
        extra_args=["--registry-store-uri", f"privacygate+{backend}"],
        env={
            "PRIVACY_GATE_PUBLIC_KEY": str(tmp / "audit.pub.pem"),
            "PRIVACY_GATE_PROTECTED_ALIASES": "champion, production",
        },
    ) as server:
        client = MlflowClient(tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri)
        client.create_registered_model(MODEL)
        try:
            yield Gated(
                server,
                client,
                load_private_key(tmp / "audit.pem"),
                load_private_key(tmp / "other.pem"),
            )
        finally:  # register sets the global registry URI (and its environment variable)
            mlflow.set_registry_uri("")
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


@functools.cache
def audited(status: str) -> str:
    """A real audit's JSON (K = 8, 60 records): no leak and a policy it passes, or three
    strongly leaking records and a max_patient_auc it fails."""
    rng = np.random.default_rng(1)
    k, n = 8, 60
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    shift = 0.0 if status == "pass" else 6.0
    scores = rng.standard_normal((k, n)) + masks * np.r_[np.full(3, shift), np.zeros(n - 3)]
    records = records_from_columns([f"r{i}" for i in range(n)], [f"p{i}" for i in range(n)], {})
    limit = 1.0 if status == "pass" else 0.8
    policy = parse_config({"gate": {"max_patient_auc": limit}})
    result = audit(make_signals(scores, masks, task="binary"), records, policy)
    assert result.decision.status.value == status
    return json.dumps(result.report.to_dict())


def report(status: str = "pass", schema: str = SCHEMA_VERSION) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(audited(status))
    data["schema_version"] = schema
    return data


def register(
    gated: Gated,
    *,
    status: str | None = "pass",
    key: Any = None,
    report_run: str | None = None,
    tamper: bool = False,
    schema: str = SCHEMA_VERSION,
) -> str:
    """Log a tiny model (and optionally a signed report) into a new run; register it."""
    mlflow.set_tracking_uri(gated.server.tracking_uri)
    mlflow.set_registry_uri(gated.server.tracking_uri)
    mlflow.set_experiment("gated-registry")  # not another module's active experiment
    model = torch.nn.Linear(3, 1)
    digest = weights_sha256(model)
    with mlflow.start_run() as run:
        if tamper:  # weights changed after the audit
            with torch.no_grad():
                model.weight.add_(1.0)
        info = mlflow.pytorch.log_model(  # pt2 (MLflow 3's default): loads without pickle
            model,
            name="model",
            input_example=np.zeros((1, 3), dtype=np.float32),
            pip_requirements=["torch"],  # skips the slow requirements inference
        )
        if status is not None:
            signed = sign_report(
                report(status, schema),
                key if key is not None else gated.private,
                run_id=report_run or run.info.run_id,
                model_sha256=digest,
            )
            gated.client.log_text(run.info.run_id, json.dumps(signed), "privacy_gate/report.json")
    version = gated.client.create_model_version(
        MODEL, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    return str(version.version)


def rest_alias(gated: Gated, version: str, alias: str = "champion") -> requests.Response:
    return requests.post(
        f"{gated.server.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": alias, "version": version},
        timeout=REQUEST_TIMEOUT_S,
    )
