"""The pure parts of `lightning_callbacks`, without a Trainer: argument validation, the
settings copied from a Trainer, and the recipe problems that send a fit to the
one-at-a-time path."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from lightning_callbacks._recipe import TrainerSettings, _trainer_problems  # noqa: E402
from lightning_callbacks._settings import OnFail, validate_settings  # noqa: E402
from privacy_gate.config import parse_config  # noqa: E402
from privacy_gate.errors import ConfigError  # noqa: E402
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS  # noqa: E402
from privacy_gate.signals import Task  # noqa: E402

VALID: dict[str, Any] = {
    "config": None,
    "holdout": None,
    "patient_ids": None,
    "subgroups": None,
    "reference_models": DEFAULT_REFERENCE_MODELS,
    "backend": "auto",
    "seed": 0,
    "on_fail": "raise",
    "output_dir": None,
    "model_factory": None,
    "task": "multiclass",
    "plots": True,
}


def test_reference_models_auto_is_an_adaptive_plan() -> None:
    from privacy_gate.adaptive import AdaptivePlan

    assert validate_settings(**{**VALID, "reference_models": "auto"}).reference_models == (
        AdaptivePlan()
    )
    plan = AdaptivePlan(max_reference_models=128)
    assert validate_settings(**{**VALID, "reference_models": plan}).reference_models is plan


def test_valid_settings_are_normalised() -> None:
    settings = validate_settings(**{**VALID, "backend": "sequential", "output_dir": "out/x"})
    assert settings.backend == "sequential" and settings.task is Task.MULTICLASS
    assert settings.on_fail is OnFail.RAISE and str(settings.output_dir) == "out/x"
    assert settings.subgroups == {} and settings.backend_options == {}


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("reference_models", 7, "an even integer >= 2"),
        ("reference_models", True, "an even integer >= 2"),
        ("seed", -1, "an integer >= 0"),
        ("backend", "gpu", "backend"),
        ("on_fail", "ignore", "on_fail"),
        ("task", "regression", "task"),
        ("plots", "yes", "a bool"),
        ("model_factory", 3, "a callable"),
        ("subgroups", {"": [1]}, "a mapping from column name"),
        ("holdout", [1, 2], "a torch Dataset or DataLoader"),
    ],
)
def test_each_bad_argument_is_named_with_the_fix(name: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_settings(**{**VALID, name: value})
    assert f"'{name}'" in str(caught.value) and fragment in str(caught.value)


def test_policy_subgroups_must_be_given() -> None:
    policy = parse_config({"subgroups": ["sex"], "gate": {"max_patient_auc": 0.95}})
    with pytest.raises(ConfigError, match=r"add the column\(s\) \['sex'\]"):
        validate_settings(**{**VALID, "config": policy})


def _trainer(**changes: Any) -> SimpleNamespace:
    values: dict[str, Any] = {
        "gradient_clip_algorithm": None,
        "strategy": SimpleNamespace(root_device=torch.device("cpu")),
        "max_epochs": 5,
        "should_stop": False,
        "current_epoch": 5,
        "max_steps": -1,
        "precision": "32-true",
        "gradient_clip_val": None,
        "accumulate_grad_batches": 1,
        "limit_train_batches": 1.0,
    }
    values.update(changes)
    return SimpleNamespace(**values)


def test_trainer_settings_copy_what_reference_models_need() -> None:
    settings = TrainerSettings.of(_trainer())
    assert settings.trainer_kwargs()["max_epochs"] == 5
    assert settings.trainer_kwargs()["devices"] == 1 and settings.accelerator == "cpu"
    assert _trainer_problems(settings) == []
    # A fit stopped early trains its reference models as long as it trained itself.
    stopped = TrainerSettings.of(_trainer(should_stop=True, current_epoch=3))
    assert stopped.max_epochs == 3


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"max_epochs": None}, "no max_epochs"),
        ({"max_steps": 100}, "max_steps=100"),
        ({"precision": "16-mixed"}, "precision '16-mixed'"),
        ({"accumulate_grad_batches": 4}, "accumulate_grad_batches=4"),
        ({"gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"}, "clipped by value"),
        ({"limit_train_batches": 0.5}, "limit_train_batches=0.5"),
    ],
)
def test_trainer_settings_the_batched_path_cannot_copy(
    changes: dict[str, Any], problem: str
) -> None:
    problems = _trainer_problems(TrainerSettings.of(_trainer(**changes)))
    assert any(problem in p for p in problems), problems
