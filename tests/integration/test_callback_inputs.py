"""The Lightning callback checks its input before the fit trains (issue 25): misaligned
metadata, labels that do not fit the task and a factory of the wrong type stop ``fit``
before the first optimizer step, and the callback leaves the fit's randomness alone."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("pytorch_lightning")

from test_lightning_callback import PATIENTS, N, _tensors, callback_class, namespace_classes

from privacy_gate.errors import InputError


def _trainer(classes: dict[str, Any], callbacks: list[Any], tmp_path: Path) -> Any:
    return classes["pl"].Trainer(
        max_epochs=2, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip


def _fit_with(tmp_path: Path, labels: torch.Tensor | None = None, **options: Any) -> Any:
    classes = namespace_classes("pytorch_lightning")
    inputs, default_labels = _tensors()
    labels = default_labels if labels is None else labels
    half = N // 2
    callback = callback_class("pytorch_lightning")(
        reference_models=4, output_dir=tmp_path / "audit", plots=False, on_fail="warn",
        holdout=TensorDataset(inputs[half:], default_labels[half:]), **options,
    )  # fmt: skip
    trainer = _trainer(classes, [callback], tmp_path)
    loader = DataLoader(TensorDataset(inputs[:half], labels[:half]), batch_size=16)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(classes["module"](), train_dataloaders=loader)
    finally:
        assert trainer.global_step == 0, "the fit trained before the input error"
        assert not (tmp_path / "audit" / "report.json").exists()


def test_misaligned_patient_ids_stop_the_fit_before_it_trains(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'patient_ids' parameter .* has 119 values .* 120"):
        _fit_with(tmp_path, patient_ids=PATIENTS[:-1])


def test_float_labels_stop_the_fit_before_it_trains(tmp_path: Path) -> None:
    _, labels = _tensors()
    with pytest.raises(InputError, match=r"AuditData.train_labels has dtype torch.float32"):
        _fit_with(tmp_path, labels=labels.float() * 0.9)


def test_a_factory_of_plain_modules_is_refused_when_the_fit_starts(tmp_path: Path) -> None:
    """Reference models train with the module's own configure_optimizers/training_step:
    a plain nn.Module factory used to crash after the fit with Lightning's TypeError."""
    with pytest.raises(InputError, match=r"must return a pytorch_lightning.*LightningModule"):
        _fit_with(tmp_path, model_factory=lambda: nn.Linear(6, 2))


def test_the_callback_leaves_the_fits_randomness_alone(tmp_path: Path) -> None:
    """The same seeded fit with and without the callback ends with the same weights: the
    callback's fresh module and probe forward pass draw nothing from the fit's RNG."""
    classes = namespace_classes("pytorch_lightning")
    inputs, labels = _tensors()
    half = N // 2

    def weights(callbacks: list[Any], root: Path) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        module = classes["module"](hidden=16)
        loader = DataLoader(
            TensorDataset(inputs[:half], labels[:half]), batch_size=16, shuffle=True
        )
        trainer = _trainer(classes, callbacks, root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, train_dataloaders=loader)
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    callback = callback_class("pytorch_lightning")(
        reference_models=4, output_dir=tmp_path / "audit", plots=False, on_fail="warn",
        holdout=TensorDataset(inputs[half:], labels[half:]),
    )  # fmt: skip
    audited = weights([callback], tmp_path / "a")
    plain = weights([], tmp_path / "b")
    assert callback.audited_
    assert all(torch.equal(audited[k], plain[k]) for k in plain)


def test_a_module_torch_export_refuses_still_has_its_audit_logged(
    tmp_path: Path, write_config: Any
) -> None:
    """The callback logs the audited module for its release; where torch.export cannot
    trace its forward, the audit is still logged into the run and a warning says that no
    version of the run can be promoted, with the ways out."""
    import importlib

    from mlflow.tracking import MlflowClient

    classes = namespace_classes("pytorch_lightning")

    class DataDependent(classes["module"]):  # type: ignore[misc,name-defined]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            return -y if float(y.sum().item()) > 1e30 else y  # data-dependent: no export

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    loggers = importlib.import_module("pytorch_lightning.loggers")
    logger = loggers.MLFlowLogger(
        experiment_name="audits", tracking_uri=uri,
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )  # fmt: skip
    callback = callback_class("pytorch_lightning")(
        reference_models=4, output_dir=tmp_path / "audit", plots=False, on_fail="warn",
        patient_ids=PATIENTS, config=write_config("gate:\n  max_patient_auc: 1.0\n"),
    )  # fmt: skip
    trainer = classes["pl"].Trainer(
        max_epochs=1, callbacks=[callback], logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"but not the audited DataDependent .*log_model=False"):
        trainer.fit(DataDependent(), datamodule=classes["data"]())
    run = MlflowClient(tracking_uri=uri).get_run(logger.run_id)
    assert run.data.tags["privacy_gate.status"] == "pass"
    assert callback.status_ == "pass"
