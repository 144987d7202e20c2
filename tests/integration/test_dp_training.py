"""DP-SGD training for real: Opacus in `train_one`, the `DPSGD` Lightning callback in both
namespaces, and audits of DP-trained models. No mocks.

The update checks use one step over all records (batch size >= N makes Opacus' Poisson
sampling rate 1, so every record is in the step) with plain SGD at learning rate 1: the
update is then exactly ``-(sum_i clip_C(g_i) + N(0, sigma^2 C^2)) / N``, which the tests
compute independently from per-record gradients.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings(
    "ignore:Optimal order is the largest alpha",
    "ignore::RuntimeWarning",
    "ignore:Full backward hook is firing",
)

sys.path.insert(0, str(Path(__file__).parent))
from tiny_audit import load_data, make_model  # noqa: E402

from privacy_gate.errors import ConfigError  # noqa: E402
from privacy_gate.training.audit import run_audit  # noqa: E402
from privacy_gate.training.recipe import parse_recipe  # noqa: E402
from privacy_gate.training.sequential import train_one  # noqa: E402

N, FEATURES, CLASSES, CLIP = 64, 20, 10, 0.05
NAMESPACES = {
    "pytorch_lightning": "lightning_callbacks.pytorch_lightning",
    "lightning.pytorch": "lightning_callbacks.lightning",
}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(N, FEATURES, generator=generator), torch.randint(
        0, CLASSES, (N,), generator=generator
    )


def _linear() -> nn.Module:
    return nn.Linear(FEATURES, CLASSES)


def _initial(seed: int = 5) -> nn.Module:
    """The model `train_one(_linear, ..., seed=seed)` starts from."""
    torch.manual_seed(seed)
    return _linear()


def clipped_mean_update(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``-sum_i clip(g_i) / N`` (flattened), from one backward pass per record."""
    total = torch.zeros(sum(p.numel() for p in model.parameters()))
    for i in range(len(inputs)):
        model.zero_grad()
        F.cross_entropy(model(inputs[i : i + 1]), labels[i : i + 1]).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        total += grad * min(1.0, CLIP / float(grad.norm()))
    return -total / len(inputs)


def mean_update(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    F.cross_entropy(model(inputs), labels).backward()
    return -torch.cat([p.grad.flatten() for p in model.parameters()])


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def one_step_recipe(noise: float) -> Any:
    return parse_recipe(
        {
            "epochs": 1,
            "batch_size": N,
            "optimizer": "sgd",
            "learning_rate": 1.0,
            "dp": {"noise_multiplier": noise, "max_grad_norm": CLIP},
        }
    )


def test_train_one_clips_each_record_and_adds_calibrated_noise() -> None:
    inputs, labels = _data()
    start = flat(_initial())
    expected = clipped_mean_update(_initial(), inputs, labels)
    unclipped = mean_update(_initial(), inputs, labels)
    assert not torch.allclose(expected, unclipped, atol=1e-3)  # clipping is active

    quiet = train_one(_linear, inputs, labels, np.arange(N), one_step_recipe(1e-9), seed=5)
    torch.testing.assert_close(flat(quiet) - start, expected, atol=1e-6, rtol=1e-4)

    sigma = 1.0
    noisy = train_one(_linear, inputs, labels, np.arange(N), one_step_recipe(sigma), seed=5)
    noise = (flat(noisy) - start - expected) * N  # N(0, sigma^2 C^2) per coordinate
    assert abs(float(noise.std()) / (sigma * CLIP) - 1.0) < 0.15
    assert abs(float(noise.mean())) < 4 * sigma * CLIP / noise.numel() ** 0.5
    again = train_one(_linear, inputs, labels, np.arange(N), one_step_recipe(sigma), seed=5)
    torch.testing.assert_close(flat(again), flat(noisy))  # seeded: a resumed audit repeats


def _lightning_module(namespace: str) -> Any:
    pl = importlib.import_module(namespace)

    class LinearModule(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = _initial()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1.0)

    return pl, LinearModule


def _trainer(pl: Any, callbacks: list[Any], **kwargs: Any) -> Any:
    options = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kwargs,
    }
    return pl.Trainer(callbacks=callbacks, **options)


@pytest.mark.parametrize("namespace", list(NAMESPACES))
def test_dpsgd_callback_makes_lightning_training_private(namespace: str) -> None:
    pl, module_class = _lightning_module(namespace)
    dpsgd = importlib.import_module(NAMESPACES[namespace]).DPSGD
    inputs, labels = _data()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=N)
    expected = clipped_mean_update(_initial(), inputs, labels)

    quiet = module_class()
    start = flat(quiet)
    trainer = _trainer(pl, [dpsgd(noise_multiplier=1e-9, max_grad_norm=CLIP, seed=0)])
    trainer.fit(quiet, loader)
    torch.testing.assert_close(flat(quiet) - start, expected, atol=1e-6, rtol=1e-4)
    assert type(trainer.optimizers[0]).__name__ == "DPOptimizer"
    assert not any(hasattr(p, "grad_sample") for p in quiet.parameters())  # hooks removed

    noisy = module_class()
    dp = dpsgd(noise_multiplier=1.0, max_grad_norm=CLIP, seed=0)
    trainer = _trainer(pl, [dp])
    trainer.fit(noisy, loader)
    noise = (flat(noisy) - start - expected) * N
    assert abs(float(noise.std()) / CLIP - 1.0) < 0.15
    # one step at sample rate 1: epsilon of the Gaussian mechanism, logged by the callback
    assert dp.history_ == [(1.0, 1.0, 1)]
    assert float(trainer.callback_metrics["dp/epsilon"]) == pytest.approx(dp.epsilon_)
    assert 0 < dp.epsilon_ < 10


@pytest.mark.parametrize(
    ("trainer_kwargs", "message"),
    [
        ({"accumulate_grad_batches": 2}, "accumulate_grad_batches=2"),
        ({"gradient_clip_val": 1.0}, "gradient_clip_val"),
    ],
)
def test_dpsgd_refuses_settings_that_break_the_accounting(
    trainer_kwargs: dict[str, Any], message: str
) -> None:
    pl, module_class = _lightning_module("pytorch_lightning")
    from lightning_callbacks import DPSGD

    inputs, labels = _data()
    trainer = _trainer(pl, [DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)], **trainer_kwargs)
    with pytest.raises(ConfigError, match=message):
        trainer.fit(module_class(), DataLoader(TensorDataset(inputs, labels), batch_size=8))


def test_dpsgd_validates_its_arguments() -> None:
    from lightning_callbacks import DPSGD

    with pytest.raises(ConfigError, match="'noise_multiplier' parameter of DPSGD"):
        DPSGD(noise_multiplier=0.0, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="'delta' parameter of DPSGD"):
        DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, delta=2.0)
    with pytest.raises(ConfigError, match="secure_mode=True"):
        DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, secure_mode=True, seed=1)


@pytest.mark.slow
def test_dp_trained_model_has_lower_patient_aucs_with_the_callback(tmp_path: Path) -> None:
    """The same fit with and without DPSGD, audited by PrivacyAuditCallback (K = 8)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_lightning_callback import PATIENTS, namespace_classes

    from lightning_callbacks import DPSGD, PrivacyAuditCallback

    classes = namespace_classes("pytorch_lightning")
    reports = {}
    dp_sgd = DPSGD(noise_multiplier=2.0, max_grad_norm=1.0, log_epsilon=False)
    for name, extra in (("plain", []), ("dp", [dp_sgd])):
        audit = PrivacyAuditCallback(
            reference_models=8,
            patient_ids=PATIENTS,
            output_dir=tmp_path / name,
            plots=False,
            on_fail="warn",
        )
        trainer = classes["pl"].Trainer(
            max_epochs=20,
            callbacks=[*extra, audit],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        with pytest.warns(UserWarning):  # the gate fails at K = 8; on_fail="warn"
            trainer.fit(classes["module"](hidden=64, lr=0.05), datamodule=classes["data"]())
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    plain, dp = reports["plain"], reports["dp"]
    assert dp["summary"]["patient_auc"]["mean"] < plain["summary"]["patient_auc"]["mean"]
    # DP-SGD reference models train as one batched ensemble with Opacus' semantics
    assert dp["audit"]["training"]["backend"] == "batched"
    assert dp["audit"]["training"]["recipe"]["dp"] == {
        "noise_multiplier": 2.0,
        "max_grad_norm": 1.0,
    }
    assert "dp_training" not in plain  # written only for a DP-SGD recipe
    assert dp["dp_training"]["records_above_ceiling"] == 0
    assert plain["dp_recommendation"]["status"] == "recommended"


def test_run_audit_with_a_dp_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_GATE_PSEUDONYM_KEY", "test-key")  # same keys when resumed
    data = load_data(n_records=120)
    recipe = parse_recipe(
        {
            "epochs": 5,
            "batch_size": 16,
            "learning_rate": 0.01,
            "dp": {"noise_multiplier": 1.5, "max_grad_norm": 1.0},
        }
    )
    result = run_audit(make_model, data, recipe=recipe, reference_models=4, out_dir=tmp_path)
    report = result.report
    assert report.audit.training is not None
    assert report.audit.training.backend == "batched"  # DP-SGD in the batched engine
    assert report.audit.training.fallback_reason is None
    dp = report.dp_training
    assert dp is not None
    members = int(data.is_member().sum())
    assert dp.sample_rate == pytest.approx(1 / np.ceil(members / 16))
    assert dp.steps == 5 * np.ceil(members / 16)
    assert dp.delta == pytest.approx(1 / members)
    assert 0.5 < dp.auc_ceiling <= dp.patient_auc_ceiling < 1
    assert dp.max_records_per_patient == 2  # tiny_audit: every 4th patient has 2 records
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["dp_training"] == pytest.approx(report.to_dict()["dp_training"])
    assert "Differential privacy of the audited recipe" in (tmp_path / "report.md").read_text()
    # resumed: nothing retrained, same report figures
    again = run_audit(make_model, data, recipe=recipe, reference_models=4, out_dir=tmp_path)
    assert again.report.audit.training.trained_now == 0
    assert again.report.summary == report.summary


def test_recipe_dp_validation() -> None:
    with pytest.raises(ConfigError, match="lacks \\['max_grad_norm'\\]"):
        parse_recipe({"dp": {"noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_recipe({"dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "eps": 3}})
    with pytest.raises(ConfigError, match=r"'noise_multiplier' parameter of recipe\.dp"):
        parse_recipe({"dp": {"noise_multiplier": -1, "max_grad_norm": 1.0}})
    with pytest.raises(ConfigError, match=r"both 'max_grad_norm'"):
        parse_recipe({"max_grad_norm": 1.0, "dp": {"noise_multiplier": 1, "max_grad_norm": 1}})
    assert "dp" not in parse_recipe({}).to_dict()  # old cache keys stay valid


def test_dpsgd_with_the_modules_own_loader_and_its_state(tmp_path: Path) -> None:
    """The train DataLoader from ``LightningModule.train_dataloader``; the spent privacy
    survives a checkpoint (state_dict) and pickling keeps no live Opacus objects."""
    import pickle

    pl, module_class = _lightning_module("lightning.pytorch")
    from lightning_callbacks.lightning import DPSGD

    inputs, labels = _data()

    class WithLoader(module_class):  # type: ignore[misc,valid-type]
        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(TensorDataset(inputs, labels), batch_size=16)

    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, seed=3)
    trainer = _trainer(pl, [dp], max_epochs=2)
    trainer.fit(WithLoader())
    assert dp.batch_size_ == 16 and dp.dataset_size_ == N
    assert dp.history_ == [(1.0, 0.25, 8)]  # q = 1/ceil(64/16), 2 epochs of 4 steps
    restored = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)
    restored.load_state_dict(dp.state_dict())
    assert restored.history_ == dp.history_ and restored.epsilon_ == dp.epsilon_
    clone = pickle.loads(pickle.dumps(dp))
    assert clone._module is None and clone.history_ == dp.history_


def test_batchnorm_is_replaced_for_dp_sgd_with_a_warning() -> None:
    """The same in-place fix for `train_one` and the `DPSGD` callback."""
    inputs, labels = _data()

    def with_batchnorm() -> nn.Module:
        return nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.Linear(8, CLASSES))

    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    recipe = parse_recipe({"epochs": 1, "batch_size": 16, "dp": dp})
    with pytest.warns(UserWarning, match=r"1 \(BatchNorm1d\)"):
        model = train_one(with_batchnorm, inputs, labels, np.arange(N), recipe, seed=0)
    assert isinstance(model[1], nn.GroupNorm)

    pl, module_class = _lightning_module("pytorch_lightning")
    from lightning_callbacks import DPSGD

    module = module_class()
    module.net = with_batchnorm()
    trainer = _trainer(pl, [DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)])
    with pytest.warns(UserWarning, match=r"DPSGD \(LinearModule\).*net\.1 \(BatchNorm1d\)"):
        trainer.fit(module, DataLoader(TensorDataset(inputs, labels), batch_size=16))
    assert isinstance(module.net[1], nn.GroupNorm)


@pytest.mark.parametrize("namespace", list(NAMESPACES))
@pytest.mark.parametrize("fails", [False, True], ids=["fit", "exception"])
def test_dpsgd_leaves_lightning_and_warnings_as_it_found_them(namespace: str, fails: bool) -> None:
    """The patched train-loader hook and the warning filter are undone after the fit, and
    after a fit that raises; the GradSampleModule's hooks are removed either way."""
    pl, module_class = _lightning_module(namespace)
    dpsgd = importlib.import_module(NAMESPACES[namespace]).DPSGD
    inputs, labels = _data()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=N)

    class Failing(module_class):  # type: ignore[misc,valid-type]
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            raise RuntimeError("step failed")

    module = Failing() if fails else module_class()
    trainer = _trainer(pl, [dpsgd(noise_multiplier=1.0, max_grad_norm=CLIP, seed=0)])
    source = trainer.fit_loop._data_source
    filters = list(warnings.filters)
    if fails:
        with pytest.raises(RuntimeError, match="step failed"):
            trainer.fit(module, loader)
    else:
        trainer.fit(module, loader)
    assert warnings.filters == filters
    assert trainer.fit_loop._data_source is source
    assert "dataloader" not in vars(source)  # Lightning's own method again
    assert not any(hasattr(p, "grad_sample") for p in module.parameters())
