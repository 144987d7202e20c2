"""`PrivacyAuditCallback` with real ``Trainer.fit`` runs on tiny modules and data.

120 records (60 members, 60 held out), 6 features, K = 4 reference models, 2 epochs.
Both Lightning namespaces; no mocks.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("pytorch_lightning")
pytest.importorskip("lightning")

from tiny_audit import SubclassedBatchNorm1d

from lightning_callbacks import PrivacyGateFailed
from privacy_gate.metrics import PASSED, TRAINER_METRICS, report_metrics
from privacy_gate.report_model import AuditReport

N, FEATURES, K, EPOCHS = 120, 6, 4, 2
NAMESPACES = ("pytorch_lightning", "lightning.pytorch")
CALLBACK_MODULES = {
    "pytorch_lightning": "lightning_callbacks.pytorch_lightning",
    "lightning.pytorch": "lightning_callbacks.lightning",
}
STRICT_POLICY = """
gate:
  max_patient_auc: 0.5000001
  max_patients_at_risk: 0
"""
LENIENT_POLICY = """
gate:
  max_patient_auc: 1.0
"""


def _tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, N)
    inputs = rng.normal(size=(N, FEATURES)) + labels[:, None] * 0.8
    return torch.tensor(inputs, dtype=torch.float32), torch.tensor(labels)


PATIENTS = [f"p{i // 2}" for i in range(N)]  # two records per patient (within a split)


def namespace_classes(namespace: str) -> dict[str, Any]:
    """A LightningModule, a BatchNorm variant and a DataModule of ``namespace``."""
    pl: ModuleType = importlib.import_module(namespace)

    class TinyModule(pl.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self, hidden: int = 16, lr: float = 0.01, norm_layer: str = "") -> None:
            super().__init__()
            self.save_hyperparameters()
            kinds = {"batchnorm": nn.BatchNorm1d, "subclassed": SubclassedBatchNorm1d}
            norm: list[nn.Module] = [kinds[norm_layer](hidden)] if norm_layer else []
            self.net = nn.Sequential(
                nn.Linear(FEATURES, hidden), *norm, nn.ReLU(), nn.Linear(hidden, 2)
            )
            self.loss_fn = nn.CrossEntropyLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss_fn(self(x), y)
            self.log("train_loss", loss)
            return loss  # type: ignore[no-any-return]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    class TinyData(pl.LightningDataModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            inputs, labels = _tensors()
            self.train_set = TensorDataset(inputs[: N // 2], labels[: N // 2])
            self.test_set = TensorDataset(inputs[N // 2 :], labels[N // 2 :])

        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(self.train_set, batch_size=16, shuffle=True)

        def test_dataloader(self) -> DataLoader[Any]:
            return DataLoader(self.test_set, batch_size=16)

    return {"pl": pl, "module": TinyModule, "data": TinyData}


def callback_class(namespace: str) -> Any:
    return importlib.import_module(CALLBACK_MODULES[namespace]).PrivacyAuditCallback


def fit(
    tmp_path: Path, namespace: str = "pytorch_lightning", module_kwargs: Any = None, **kwargs: Any
) -> tuple[Any, Any]:
    """One real fit with the callback; returns (trainer, callback)."""
    classes = namespace_classes(namespace)
    options: dict[str, Any] = {
        "reference_models": K,
        "patient_ids": PATIENTS,
        "output_dir": tmp_path / "audit",
        "plots": False,
        "on_fail": "warn",
        **kwargs,
    }
    callback = callback_class(namespace)(**options)
    trainer = classes["pl"].Trainer(
        max_epochs=EPOCHS,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    torch.manual_seed(0)
    model = classes["module"](**(module_kwargs or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=classes["data"]())
    return trainer, callback


def report(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "audit" / "report.json").read_text("utf-8"))  # type: ignore[no-any-return]


@pytest.fixture
def lenient(write_config: Any) -> Path:
    return write_config(LENIENT_POLICY)  # type: ignore[no-any-return]


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_audit_runs_after_fit_batched(tmp_path: Path, namespace: str, lenient: Path) -> None:
    trainer, callback = fit(tmp_path, namespace, config=lenient)
    data = report(tmp_path)
    assert data["audit"]["reference_models"] == K
    assert data["audit"]["records"] == N
    assert data["audit"]["patients"] == N // 2
    assert data["audit"]["training"]["backend"] == "batched"
    assert data["audit"]["training"]["fallback_reason"] is None
    assert data["audit"]["training"]["recipe"]["optimizer"] == "adam"
    assert data["audit"]["training"]["recipe"]["epochs"] == EPOCHS
    assert data["audit"]["training"]["recipe"]["batch_size"] == 16
    assert data["audit"]["training"]["candidate"] == "given"
    assert data["decision"]["status"] == "pass"
    metrics = trainer.callback_metrics
    # The same keys, and values, as the MLflow run gets (one source: privacy_gate.metrics).
    logged = report_metrics(AuditReport.from_dict(data))
    for key in (*TRAINER_METRICS, PASSED):
        assert isinstance(metrics[key], torch.Tensor), key
        if key != PASSED:
            assert float(metrics[key]) == pytest.approx(logged[key], rel=1e-6), key
    assert float(metrics["privacy_gate/passed"]) == 1.0
    assert float(metrics["privacy_gate/patient_auc/max"]) == pytest.approx(
        data["summary"]["patient_auc"]["max"]
    )
    assert callback.audited_ and callback.status_ == "pass"
    assert len(callback.report_sha256_) == 64


def test_raise_names_every_violated_rule(tmp_path: Path, write_config: Any) -> None:
    with pytest.raises(PrivacyGateFailed) as failure:
        fit(tmp_path, config=write_config(STRICT_POLICY), on_fail="raise")
    assert isinstance(failure.value, RuntimeError)
    assert "max_patient_auc" in str(failure.value)
    assert "max_patient_auc" in failure.value.violations
    assert set(failure.value.violations) == {
        v["rule"] for v in report(tmp_path)["decision"]["violations"]
    }
    message = str(failure.value)
    lines = message.splitlines()
    for rule in failure.value.violations:  # one readable line per rule
        assert sum(line.startswith(f"  - {rule}: ") for line in lines) == 1, message
    assert ".;" not in message and ".." not in message.replace("...", "")
    assert any(line.startswith("Report: ") for line in lines) and lines[-1].startswith("HINT:")


@pytest.mark.parametrize("on_fail", ["warn", "tag"])
def test_warn_and_tag_warn(tmp_path: Path, write_config: Any, on_fail: str) -> None:
    classes = namespace_classes("pytorch_lightning")
    callback = callback_class("pytorch_lightning")(
        reference_models=K, output_dir=tmp_path / "audit", plots=False,
        config=write_config(STRICT_POLICY), on_fail=on_fail,
    )  # fmt: skip
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="max_patient_auc") as caught:
        trainer.fit(classes["module"](), datamodule=classes["data"]())
    if on_fail == "tag":
        assert any("no MLFlowLogger" in str(w.message) for w in caught)
    assert float(trainer.callback_metrics["privacy_gate/passed"]) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"reference_models": 3}, "reference_models"),
        ({"reference_models": 0}, "reference_models"),
        ({"reference_models": True}, "reference_models"),
        ({"backend": "gpu-cluster"}, "backend"),
        ({"on_fail": "ignore"}, "on_fail"),
        ({"config": "/nonexistent/policy.yaml"}, "config"),
        ({"config": 42}, "config"),
        ({"task": "regression"}, "task"),
        ({"seed": -1}, "seed"),
        ({"holdout": [1, 2, 3]}, "holdout"),
        ({"patient_ids": 7}, "patient_ids"),
        ({"subgroups": ["sex"]}, "subgroups"),
        ({"model_factory": "MyModel"}, "model_factory"),
        ({"plots": "yes"}, "plots"),
        ({"output_dir": 3.5}, "output_dir"),
    ],
)
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_misconfiguration_fails_at_construction(
    namespace: str, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=rf"The '{name}' parameter of PrivacyAuditCallback"):
        callback_class(namespace)(**kwargs)


def test_policy_subgroups_must_be_given(write_config: Any) -> None:
    path = write_config("subgroups: [sex]\ngate: {max_patient_auc: 0.9}\n")
    with pytest.raises(ValueError, match=r"The 'subgroups' parameter.*\['sex'\]"):
        callback_class("pytorch_lightning")(config=path)


def test_batchnorm_module_trains_batched(tmp_path: Path, lenient: Path) -> None:
    """BatchNorm layers are batched with masked statistics (test_batch_norm.py)."""
    fit(tmp_path, "lightning.pytorch", {"norm_layer": "batchnorm"}, config=lenient)
    training = report(tmp_path)["audit"]["training"]
    assert training["backend"] == "batched" and training["fallback_reason"] is None


def test_unbatchable_norm_falls_back_to_sequential(
    tmp_path: Path, lenient: Path, caplog: pytest.LogCaptureFixture
) -> None:
    subgroups = {"site": lambda split, i: f"{split}-{i % 3}"}
    with caplog.at_level(logging.INFO, logger="lightning_callbacks"):
        fit(
            tmp_path, "lightning.pytorch", {"norm_layer": "subclassed"}, config=lenient,
            subgroups=subgroups,
        )  # fmt: skip
    training = report(tmp_path)["audit"]["training"]
    assert training["backend"] == "sequential"
    assert "BatchNorm subclass" in training["fallback_reason"]
    assert "lightning.pytorch" in training["trainer"]["class"]
    assert any("BatchNorm" in r.getMessage() for r in caplog.records)
    assert any("privacy-gate: PASS" in r.getMessage() for r in caplog.records)


def test_scheduler_falls_back_with_reason(tmp_path: Path, lenient: Path) -> None:
    classes = namespace_classes("pytorch_lightning")

    class Scheduled(classes["module"]):  # type: ignore[misc,name-defined]
        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.05)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 1)]

    callback = callback_class("pytorch_lightning")(
        reference_models=K, output_dir=tmp_path / "audit", plots=False, config=lenient,
        on_fail="warn",
    )  # fmt: skip
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Scheduled(), datamodule=classes["data"]())
    training = report(tmp_path)["audit"]["training"]
    assert training["backend"] == "sequential"
    assert "scheduler" in training["fallback_reason"]


def test_state_dict_round_trip_and_skip(tmp_path: Path, lenient: Path) -> None:
    _, first = fit(tmp_path, config=lenient)
    state = first.state_dict()
    assert state == {"audited": True, "status": "pass", "report_sha256": first.report_sha256_}
    fresh = callback_class("pytorch_lightning")()
    fresh.load_state_dict({})  # an older checkpoint without the keys
    assert fresh.state_dict() == {"audited": False, "status": None, "report_sha256": None}
    resumed = callback_class("pytorch_lightning")(
        reference_models=K, output_dir=tmp_path / "again", plots=False, config=lenient
    )
    resumed.load_state_dict(json.loads(json.dumps(state)))
    classes = namespace_classes("pytorch_lightning")
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[resumed], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(classes["module"](), datamodule=classes["data"]())
    assert not (tmp_path / "again").exists()  # the audit was not redone
    assert resumed.state_dict() == state


def test_checkpoint_after_fit_holds_the_state(tmp_path: Path, lenient: Path) -> None:
    trainer, callback = fit(tmp_path, config=lenient)
    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["callbacks"][callback.state_key] == callback.state_dict()


def test_callback_pickles(tmp_path: Path, lenient: Path) -> None:
    callback = callback_class("lightning.pytorch")(
        reference_models=K, config=lenient, patient_ids=PATIENTS, holdout=TensorDataset(
            *_tensors(1)
        ),
    )  # fmt: skip
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.settings.reference_models == K
    _, done = fit(tmp_path, config=lenient)
    restored = pickle.loads(pickle.dumps(done))
    assert restored.state_dict() == done.state_dict()


def test_without_datamodule_needs_holdout(tmp_path: Path) -> None:
    classes = namespace_classes("pytorch_lightning")
    inputs, labels = _tensors()
    callback = callback_class("pytorch_lightning")(reference_models=K, output_dir=tmp_path)
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=16)
    with pytest.raises(ValueError, match="'holdout' parameter"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(classes["module"](), train_dataloaders=loader)


def test_functional_loss_and_sgd_map_to_the_recipe(tmp_path: Path, lenient: Path) -> None:
    classes = namespace_classes("pytorch_lightning")

    class Functional(classes["module"]):  # type: ignore[misc,name-defined]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            del self.loss_fn  # a submodule; replaced by the functional form
            self.loss_fn = F.cross_entropy

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            return {"optimizer": optimizer}

    callback = callback_class("pytorch_lightning")(
        reference_models=K, output_dir=tmp_path / "audit", plots=False, config=lenient,
        holdout=DataLoader(TensorDataset(*_tensors(1)), batch_size=8),
    )  # fmt: skip
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Functional(), datamodule=classes["data"]())
    data = report(tmp_path)
    recipe = data["audit"]["training"]["recipe"]
    assert (recipe["optimizer"], recipe["momentum"], recipe["max_grad_norm"]) == ("sgd", 0.9, 1.0)
    assert data["audit"]["training"]["backend"] == "batched"
    assert data["audit"]["records"] == N // 2 + N  # 60 members + a 120-record holdout


def test_stored_failing_audit_still_raises_on_resume(tmp_path: Path) -> None:
    callback = callback_class("pytorch_lightning")(reference_models=K, output_dir=tmp_path)
    callback.load_state_dict({"audited": True, "status": "fail", "report_sha256": "ab" * 32})
    classes = namespace_classes("pytorch_lightning")
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(PrivacyGateFailed, match="earlier audit of this fit"):
        trainer.fit(classes["module"](), datamodule=classes["data"]())
    assert not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_audit_goes_into_the_mlflow_logger_run_and_tag_does_not_raise(
    tmp_path: Path,
    write_config: Any,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The audit and the audited module itself go into the logger's run; with the signing
    key the run's signed report binds the logged model's files; the FAIL line is logged
    once."""
    from mlflow.tracking import MlflowClient

    from privacy_gate.signing import (
        SIGNING_KEY_ENVIRONMENT_VARIABLE,
        load_public_key,
        verify_report,
        write_keypair,
    )

    classes = namespace_classes(namespace)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    loggers = importlib.import_module(f"{classes['pl'].__name__}.loggers")
    logger = loggers.MLFlowLogger(
        experiment_name="audits",
        tracking_uri=uri,
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    callback = callback_class(namespace)(
        reference_models=K, output_dir=tmp_path / "audit", plots=False,
        config=write_config(STRICT_POLICY), on_fail="tag",
    )  # fmt: skip
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[callback], logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    write_keypair(tmp_path / "signing.pem", tmp_path / "public.pem")
    monkeypatch.setenv(SIGNING_KEY_ENVIRONMENT_VARIABLE, str(tmp_path / "signing.pem"))
    module = classes["module"]()
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="lightning_callbacks"):
        warnings.filterwarnings("error", message=".*privacy-gate.*")  # tag: no warning
        trainer.fit(module, datamodule=classes["data"]())
    fail_lines = [r for r in caplog.records if "privacy-gate: FAIL" in r.getMessage()]
    assert len(fail_lines) == 1, [r.getMessage() for r in caplog.records]
    client = MlflowClient(tracking_uri=uri)
    signed = json.loads(
        Path(client.download_artifacts(logger.run_id, "privacy_gate/report.json", str(tmp_path)))
        .read_text("utf-8")
    )  # fmt: skip
    verify_report(signed, load_public_key(tmp_path / "public.pem"))
    files = signed["audit"]["model_files"]  # the logged module's files, bound by the audit
    assert files["format"] == "pt2" and signed["audit"]["run_id"] == logger.run_id
    from privacy_gate.training.weights import weights_sha256

    assert signed["audit"]["model_sha256"] == weights_sha256(module)
    run = client.get_run(logger.run_id)
    assert run.data.tags["privacy_gate.status"] == "fail"
    assert "max_patient_auc" in run.data.tags["privacy_gate.violations"]
    assert run.data.metrics["privacy_gate/patient_auc/max"] == pytest.approx(
        float(trainer.callback_metrics["privacy_gate/patient_auc/max"]), abs=1e-4
    )


def test_auto_reference_models_take_looks_after_fit(tmp_path: Path, lenient: Path) -> None:
    """``reference_models="auto"``: the lenient policy has no power rule, so the first
    look (16 models) settles the pass; the report records the look."""
    from privacy_gate.adaptive import AdaptivePlan

    trainer, _callback = fit(
        tmp_path, config=lenient, reference_models=AdaptivePlan(max_reference_models=32)
    )
    data = report(tmp_path)
    assert data["audit"]["reference_models"] == 16
    assert data["adaptive"]["stopped"] == "pass_settled"
    assert [look["reference_models"] for look in data["adaptive"]["looks"]] == [16]
    assert data["adaptive"]["reference_models_saved"] == 16
    assert trainer.callback_metrics["privacy_gate/passed"] == 1.0
