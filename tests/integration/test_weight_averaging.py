"""The audit is of the weights that are released: with Lightning's weight averaging
(``EMAWeightAveraging``), whatever the order in ``callbacks=[...]``, the callback audits
the averaged weights, and every reference model is trained with the same averaging."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_lightning")
pytest.importorskip("lightning")

from test_lightning_callback import (
    LENIENT_POLICY,
    NAMESPACES,
    PATIENTS,
    _tensors,
    callback_class,
    namespace_classes,
)

from privacy_gate.signals import Task
from privacy_gate.training.reference import derived_seed, reference_name
from privacy_gate.training.scoring import score_model
from privacy_gate.training.store import folder_of
from privacy_gate.training.weights import weights_sha256

K, EPOCHS = 4, 2


def _fit(
    tmp_path: Path, namespace: str, config: Path, *, averaging: Any, audit_first: bool
) -> tuple[Any, dict[str, Any]]:
    classes = namespace_classes(namespace)
    audit = callback_class(namespace)(
        config=config, reference_models=K, patient_ids=PATIENTS, output_dir=tmp_path / "audit",
        plots=False, on_fail="warn", log_model=False,
    )  # fmt: skip
    callbacks = [audit, averaging] if audit_first else [averaging, audit]
    if averaging is None:
        callbacks = [audit]
    trainer = classes["pl"].Trainer(
        max_epochs=EPOCHS, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    torch.manual_seed(0)
    module = classes["module"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=classes["data"]())
    return module, json.loads((tmp_path / "audit" / "report.json").read_text("utf-8"))


def _ema(namespace: str, **settings: Any) -> Any:
    return importlib.import_module(f"{namespace}.callbacks").EMAWeightAveraging(**settings)


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key in ("summary", "subgroups", "aggregate", "decision")}


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_averaged_weights_are_audited_in_either_order(
    tmp_path: Path, namespace: str, write_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIVACY_GATE_PSEUDONYM_KEY", "ef" * 16)  # comparable patient keys
    config = write_config(LENIENT_POLICY)
    ema = {"decay": 0.9}
    first, report_first = _fit(tmp_path / "a", namespace, config,
                               averaging=_ema(namespace, **ema), audit_first=True)  # fmt: skip
    second, report_second = _fit(tmp_path / "b", namespace, config,
                                 averaging=_ema(namespace, **ema), audit_first=False)  # fmt: skip
    raw, report_raw = _fit(tmp_path / "c", namespace, config, averaging=None, audit_first=True)
    # The module holds the average after fit; the audit bound exactly those weights.
    assert report_first["audit"]["model_sha256"] == weights_sha256(first)
    assert report_second["audit"]["model_sha256"] == weights_sha256(second)
    assert weights_sha256(first) == weights_sha256(second) != weights_sha256(raw)
    assert _figures(report_first) == _figures(report_second)
    training = report_first["audit"]["training"]
    assert [a["class"].rsplit(".", 1)[1] for a in training["weight_averaging"]] == [
        "EMAWeightAveraging"
    ]
    assert training["weight_averaging"][0]["kwargs"]["avg_fn"]["decay"] == 0.9
    assert "averages its weights (EMAWeightAveraging)" in training["fallback_reason"]
    assert training["backend"] == "sequential"  # one Trainer per model, with the averaging
    assert "weight_averaging" not in report_raw["audit"]["training"]
    assert report_raw["audit"]["training"]["backend"] == "batched"


def test_every_reference_model_trains_with_the_averaging(tmp_path: Path, write_config: Any) -> None:
    """An average that never updates keeps the initial weights: the reference models'
    stored scores are then those of each model's seeded initialisation, computed here
    independently. Without the averaging they would be trained models' scores."""
    namespace = "lightning.pytorch"
    frozen = _ema(namespace, update_starting_at_step=10**9)
    _, report = _fit(tmp_path, namespace, write_config(LENIENT_POLICY),
                     averaging=frozen, audit_first=True)  # fmt: skip
    folder = folder_of(tmp_path / "audit" / ".privacy_gate_cache",
                       report["audit"]["training"]["cache_key"])  # fmt: skip
    inputs, labels = _tensors()
    module_class = namespace_classes(namespace)["module"]
    for k in range(K):
        torch.manual_seed(derived_seed(0, k))
        initial = module_class().eval()
        expected = score_model(initial, inputs, labels, Task.MULTICLASS)
        stored = np.load(folder / f"{reference_name(k)}.npy")
        np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-7)
