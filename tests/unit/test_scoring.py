"""Membership scores from logits against log p - log(1 - p) computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from privacy_gate.errors import InputError
from privacy_gate.signals import Task
from privacy_gate.training.recipe import Recipe, parse_recipe
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
    assert np.array_equal(first, score_model(model, x, y, Task.MULTICLASS))  # eval: no dropout
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
