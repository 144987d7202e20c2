"""Membership scores from logits against log p - log(1 - p) computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from privacy_gate.errors import ConfigError, InputError
from privacy_gate.signals import Task
from privacy_gate.training.data import AuditData
from privacy_gate.training.recipe import Loss, Optimizer, Recipe, parse_recipe
from privacy_gate.training.scoring import membership_scores, score_model


def _reference(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def test_multiclass_matches_log_odds_of_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 5)) * 3
    labels = rng.integers(0, 5, 20)
    got = membership_scores(torch.tensor(logits), torch.tensor(labels), Task.MULTICLASS)
    for i in range(20):
        p = np.exp(logits[i]) / np.exp(logits[i]).sum()
        assert float(got[i]) == pytest.approx(_reference(float(p[labels[i]])), rel=1e-9)


def test_confident_models_do_not_saturate() -> None:
    logits = torch.tensor([[60.0, 0.0, 0.0]], dtype=torch.float32)
    score = float(membership_scores(logits, torch.tensor([0]), Task.MULTICLASS)[0])
    assert score == pytest.approx(60.0 - math.log(2.0), rel=1e-9)  # p = 1 in float32


def test_binary_and_multilabel() -> None:
    z = torch.tensor([[2.0], [-1.0]])
    got = membership_scores(z, torch.tensor([1, 0]), Task.BINARY)
    assert got.tolist() == pytest.approx([_reference(1 / (1 + math.exp(-2.0))),
                                          _reference(1 / (1 + math.exp(-1.0)))])  # fmt: skip
    zz = torch.tensor([[1.0, -2.0, 0.5]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    assert float(membership_scores(zz, y, Task.MULTILABEL)[0]) == pytest.approx(1.0 + 2.0 - 0.5)
    with pytest.raises(InputError):
        membership_scores(torch.zeros(2, 3), torch.tensor([0, 1]), Task.BINARY)


def test_score_model_eval_mode_and_augmentations() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    x, y = torch.randn(30, 3), torch.randint(0, 2, (30,))
    first = score_model(model, x, y, Task.MULTICLASS, batch_size=7)
    # Eval mode: no dropout, so the same computation repeats exactly...
    assert np.array_equal(first, score_model(model, x, y, Task.MULTICLASS, batch_size=7))
    # ...and another batch size agrees up to kernel rounding (AVX-512 differs ~1e-7).
    np.testing.assert_allclose(
        first, score_model(model, x, y, Task.MULTICLASS), rtol=1e-5, atol=1e-6
    )
    assert model.training  # restored
    flipped = score_model(model, x, y, Task.MULTICLASS, augmentations=[lambda t: -t])
    model.eval()
    with torch.no_grad():
        expected = (membership_scores(model(x), y, Task.MULTICLASS)
                    + membership_scores(model(-x), y, Task.MULTICLASS)) / 2  # fmt: skip
    assert flipped == pytest.approx(expected.numpy())


def test_recipe_validation() -> None:
    assert parse_recipe({"optimizer": "sgd", "momentum": 0.9}) == Recipe(
        optimizer=parse_recipe({"optimizer": "sgd"}).optimizer, momentum=0.9)  # fmt: skip
    for bad in ({"epochs": 0}, {"batch_size": 1.5}, {"learning_rate": -1}, {"lr": 0.1},
                {"optimizer": "lbfgs"}, {"betas": [0.9]}, {"max_grad_norm": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            parse_recipe(bad)


def test_python_api_takes_the_yaml_strings_and_refuses_others() -> None:
    """Recipe(optimizer="adam") and AuditData(task="multiclass") are what a user writes;
    they are coerced at construction, and a wrong string fails there, naming the values."""
    recipe = Recipe(optimizer="sgd", loss="binary_cross_entropy", betas=[0.8, 0.9])  # type: ignore[arg-type]
    assert recipe.optimizer is Optimizer.SGD and recipe.loss is Loss.BINARY_CROSS_ENTROPY
    assert recipe.betas == (0.8, 0.9) and recipe == parse_recipe(recipe.to_dict())
    with pytest.raises(ConfigError, match=r"'optimizer' parameter of recipe must be one of"):
        Recipe(optimizer="lbfgs")  # type: ignore[arg-type]
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    data = AuditData(x, y, x, y, task="binary")  # type: ignore[arg-type]
    assert data.task is Task.BINARY
    with pytest.raises(InputError, match=r"'task' parameter of AuditData must be one of"):
        AuditData(x, y, x, y, task="regression")  # type: ignore[arg-type]
