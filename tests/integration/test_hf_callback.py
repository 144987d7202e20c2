"""The Hugging Face `PrivacyAuditCallback` on real ``Trainer.train()`` runs: a tiny
``PreTrainedModel`` fine-tuned from a "pretrained" checkpoint in a local folder on 300
records of scikit-learn's breast-cancer data (150 members, 150 held out), K = 4 reference
models, 2 epochs, a real MLflow store (SQLite). No mocks."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("mlflow")
pytest.importorskip("sklearn")

import mlflow
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from sklearn.datasets import load_breast_cancer
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from privacy_gate.errors import ConfigError, PrivacyGateFailed
from privacy_gate.integrations.transformers import PrivacyAuditCallback
from privacy_gate.integrations.transformers._data import ExampleDataset, LogitsModel
from privacy_gate.integrations.transformers._reference import make_train_fn
from privacy_gate.report import load_audit_report
from privacy_gate.training.weights import weights_sha256

K, EPOCHS, N_TRAIN, N_HOLDOUT = 4, 2, 150, 150
STRICT_POLICY = "gate:\n  max_patient_auc: 0.5000001\n  max_patients_at_risk: 0\n"
LENIENT_POLICY = "gate:\n  max_patient_auc: 1.0\n"


class TinyConfig(PretrainedConfig):
    model_type = "privacy-gate-tiny"

    def __init__(self, features: int = 30, hidden: int = 16, **kwargs: Any) -> None:
        kwargs.setdefault("num_labels", 2)
        super().__init__(**kwargs)
        self.features, self.hidden = features, hidden


class TinyClassifier(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.net = nn.Sequential(
            nn.Linear(config.features, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.num_labels),
        )
        self.post_init()

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
    ) -> SequenceClassifierOutput:
        logits = self.net(x)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


@pytest.fixture(scope="module")
def data() -> tuple[ExampleDataset, ExampleDataset]:
    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    order = np.random.default_rng(0).permutation(len(labels))[: N_TRAIN + N_HOLDOUT]
    x = torch.tensor(features[order], dtype=torch.float32)
    y = torch.tensor(labels[order])
    return (
        ExampleDataset(x[:N_TRAIN], y[:N_TRAIN], "x"),
        ExampleDataset(x[N_TRAIN:], y[N_TRAIN:], "x"),
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tune's starting point, saved to a local folder (nothing is downloaded)."""
    folder = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    TinyClassifier(TinyConfig()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def mlflow_env(
    tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Iterator[str]:
    """HF's MLflowCallback reads these; each test its own experiment, its artifacts in
    the test's folder (a SQLite store's default root is ./mlruns in the working
    directory)."""
    name = request.node.name[:60]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(tmp_path / "mlartifacts").as_uri())
    # HF's MLflowCallback takes the environment's URI only when no process-wide URI is
    # set, and earlier tests in the same process may have set one.
    with _use_tracking_uri(tracking_uri):
        yield tracking_uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def arguments(tmp_path: Path, **changes: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "num_train_epochs": EPOCHS,
        "per_device_train_batch_size": 16,
        "learning_rate": 0.01,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 3,
        **changes,
    }
    return TrainingArguments(**settings)


def train(
    tmp_path: Path,
    data: tuple[ExampleDataset, ExampleDataset],
    pretrained: Path,
    callback_kwargs: dict[str, Any],
    **argument_changes: Any,
) -> tuple[Trainer, PrivacyAuditCallback]:
    train_set, holdout = data
    callback = PrivacyAuditCallback(
        holdout=holdout, reference_models=K, plots=False, **callback_kwargs
    )
    trainer = Trainer(
        model_init=lambda: TinyClassifier.from_pretrained(pretrained),
        args=arguments(tmp_path, **argument_changes),
        train_dataset=train_set,
        callbacks=[callback],
    )
    trainer.train()
    return trainer, callback


def test_default_arguments_train_a_trainer_per_model_and_log_into_the_trainers_run(
    tmp_path: Path, data: Any, pretrained: Path, mlflow_env: str, write_config: Any
) -> None:
    trainer, callback = train(
        tmp_path, data, pretrained, {"config": write_config(LENIENT_POLICY)}, report_to="mlflow"
    )  # HF's default schedule: linear
    assert callback.status_ == "pass" and callback.outcome_ is not None
    report = load_audit_report(tmp_path / "out" / "privacy_audit" / "report.json")
    training = report.audit.training
    assert training is not None and training.backend == "sequential"
    assert (
        training.fallback_reason == "lr_scheduler_type='linear' changes the learning rate per step"
    )
    assert training.extra["trainer"]["reference_models_trained_by"] == "trainer"
    assert training.model.endswith(":train.<locals>.<lambda>")  # the model_init, by name
    # Every weight of this factory is pretrained (no new head): all of it is the start.
    start = weights_sha256(LogitsModel(TinyClassifier.from_pretrained(pretrained), "x"))
    assert training.extra["starting_point"]["sha256"] == start
    assert report.audit.reference_models == K and report.audit.records == N_TRAIN + N_HOLDOUT
    # The candidate audited is the model train() trained, not the pretrained start.
    assert report.audit.model_sha256 == weights_sha256(LogitsModel(trainer.model, "x"))
    untrained = LogitsModel(TinyClassifier.from_pretrained(pretrained), "x")
    assert report.audit.model_sha256 != weights_sha256(untrained)
    # The run HF's MLflowCallback opened (and ended) holds the training loss and the audit.
    run = MlflowClient(mlflow_env).get_run(callback.outcome_.mlflow_run or "")
    assert run.data.tags["privacy_gate.status"] == "pass"
    assert "train_loss" in run.data.params or "train_loss" in run.data.metrics
    assert run.data.metrics["privacy_gate/patient_auc/max"] == pytest.approx(
        report.summary.patient_auc.max
    )
    artifacts = [
        a.path for a in MlflowClient(mlflow_env).list_artifacts(run.info.run_id, "privacy_gate")
    ]
    assert "privacy_gate/report.json" in artifacts


def test_a_failing_gate_raises_after_tagging_the_run(
    tmp_path: Path, data: Any, pretrained: Path, mlflow_env: str, write_config: Any
) -> None:
    callback_kwargs = {"config": write_config(STRICT_POLICY), "on_fail": "raise"}
    with pytest.raises(PrivacyGateFailed) as caught:
        train(tmp_path, data, pretrained, callback_kwargs,
              report_to="mlflow", lr_scheduler_type="constant")  # fmt: skip
    assert caught.value.status == "fail" and "max_patient_auc" in caught.value.violations
    assert caught.value.report == str(tmp_path / "out" / "privacy_audit" / "report.json")
    report = load_audit_report(Path(caught.value.report))
    training = report.audit.training
    assert training is not None and training.fallback_reason is None  # the exact recipe
    assert training.backend == "batched"
    assert training.recipe["optimizer"] == "adamw" and training.recipe["max_grad_norm"] == 1.0
    assert training.extra["trainer"]["reference_models_trained_by"] == "recipe"
    experiment = MlflowClient(mlflow_env).get_experiment_by_name(
        "test_a_failing_gate_raises_after_tagging_the_run"
    )
    assert experiment is not None
    (run,) = MlflowClient(mlflow_env).search_runs([experiment.experiment_id])
    assert run.data.tags["privacy_gate.status"] == "fail"


def test_tag_without_an_mlflow_run_warns(
    tmp_path: Path, data: Any, pretrained: Path, write_config: Any
) -> None:
    callback_kwargs = {"config": write_config(STRICT_POLICY), "on_fail": "tag"}
    with pytest.warns(UserWarning, match="found no MLflow run to tag"):
        _, callback = train(
            tmp_path, data, pretrained, callback_kwargs, lr_scheduler_type="constant"
        )
    assert callback.status_ == "fail" and callback.outcome_ is not None
    assert callback.outcome_.mlflow_run is None


def test_no_factory_fails_before_the_first_step(tmp_path: Path, data: Any) -> None:
    train_set, holdout = data
    callback = PrivacyAuditCallback(holdout=holdout, reference_models=K)
    trainer = Trainer(
        model=TinyClassifier(TinyConfig()),
        args=arguments(tmp_path),
        train_dataset=train_set,
        callbacks=[callback],
    )
    with pytest.raises(ConfigError, match="'factory' parameter of PrivacyAuditCallback"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_reference_trainer_equals_an_independent_trainer_run(
    tmp_path: Path, data: Any, pretrained: Path
) -> None:
    """The per-model path trains exactly what a plain HF Trainer trains with the same
    seed, arguments and records (the weights compared bit for bit)."""
    train_set, holdout = data
    candidate = Trainer(
        model_init=lambda: TinyClassifier.from_pretrained(pretrained),
        args=arguments(tmp_path, warmup_steps=2),
        train_dataset=train_set,
    )
    inputs = torch.cat([train_set.inputs, holdout.inputs])
    labels = torch.cat([train_set.labels, holdout.labels])
    subset = np.arange(0, N_TRAIN + N_HOLDOUT, 2, dtype=np.intp)
    factory = lambda: TinyClassifier.from_pretrained(pretrained)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = make_train_fn(candidate, factory, (inputs, labels), "x")(subset, 11)

        torch.manual_seed(11)
        model = factory()
        independent = Trainer(
            model=model,
            args=arguments(tmp_path / "independent", warmup_steps=2, seed=11),
            train_dataset=ExampleDataset(inputs[subset], labels[subset], "x"),
        )
        independent.train()
    ours = reference.model.state_dict()  # type: ignore[union-attr]
    theirs = independent.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    start = TinyClassifier.from_pretrained(pretrained).state_dict()
    assert not torch.equal(ours["net.0.weight"], start["net.0.weight"])  # it trained


def test_a_lora_fine_tune_is_audited_with_its_adapters(
    tmp_path: Path, data: Any, pretrained: Path, write_config: Any
) -> None:
    """A PEFT (LoRA) model from model_init: the frozen pretrained base, fresh adapters per
    reference model; the exact recipe trains only the trainable parameters."""
    peft = pytest.importorskip("peft")

    def lora() -> nn.Module:
        base = TinyClassifier.from_pretrained(pretrained)
        config = peft.LoraConfig(r=4, target_modules=["net.0"], modules_to_save=["net.2"])
        return peft.get_peft_model(base, config)  # type: ignore[no-any-return]

    train_set, holdout = data
    callback = PrivacyAuditCallback(
        holdout=holdout,
        reference_models=K,
        plots=False,
        config=write_config(LENIENT_POLICY),
    )
    trainer = Trainer(
        model_init=lora,
        args=arguments(tmp_path, lr_scheduler_type="constant"),
        train_dataset=train_set,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.outcome_ is not None and callback.outcome_.path == "recipe"
    report = callback.outcome_.result.report
    assert report.audit.model_sha256 == weights_sha256(LogitsModel(trainer.model, "x"))
    assert report.audit.training is not None  # the report names the user's factory
    assert report.audit.training.model.endswith(
        ":test_a_lora_fine_tune_is_audited_with_its_adapters.<locals>.lora"
    )
    trained = trainer.model.state_dict()
    start = TinyClassifier.from_pretrained(pretrained).state_dict()
    frozen = [name for name in trained if name.endswith("net.0.base_layer.weight")]
    assert frozen and torch.equal(trained[frozen[0]], start["net.0.weight"])  # base frozen


def test_training_stopped_early_is_warned_and_recorded(
    tmp_path: Path, data: Any, pretrained: Path, write_config: Any
) -> None:
    class StopAtThree(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                control.should_training_stop = True

    train_set, holdout = data
    callback = PrivacyAuditCallback(
        holdout=holdout, reference_models=K, plots=False, config=write_config(LENIENT_POLICY)
    )
    trainer = Trainer(
        model_init=lambda: TinyClassifier.from_pretrained(pretrained),
        args=arguments(tmp_path, lr_scheduler_type="constant"),
        train_dataset=train_set,
        callbacks=[StopAtThree(), callback],
    )
    with pytest.warns(UserWarning, match="training stopped at step 3 of 20"):
        trainer.train()
    assert callback.outcome_ is not None
    training = callback.outcome_.result.report.audit.training
    assert training is not None
    assert training.extra["trainer"]["stopped_early"] == {"step": 3, "max_steps": 20}
