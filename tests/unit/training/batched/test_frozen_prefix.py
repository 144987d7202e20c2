"""A frozen trunk computed once: the heads trained on the cached features equal the
whole networks trained as before (float tolerance); a trunk that is not frozen, not
deterministic or not the same in every model trains whole, and the reason is noted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_batched import N_FEATURES, SEEDS, _data, _subsets
from torch import nn

from privacy_gate.signals import Task
from privacy_gate.training.batched import train_batched
from privacy_gate.training.batched.frozen_prefix import FrozenSplit, split_frozen_prefix
from privacy_gate.training.recipe import DPSettings, Loss, Recipe
from privacy_gate.training.scoring import score_model

CLASSES = 3
RECIPE = Recipe(epochs=3, batch_size=8, learning_rate=0.05)
DP = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0)


def _pretrained_trunk(dropout: float = 0.0, norm: bool = False) -> nn.Sequential:
    """The same weights in every model (a pretrained file would do the same)."""
    generator = torch.Generator().manual_seed(123)
    layers: list[nn.Module] = [nn.Linear(N_FEATURES, 32), nn.ReLU()]
    layers += [nn.Dropout(dropout)] if dropout else []
    layers += [nn.BatchNorm1d(32)] if norm else []
    layers += [nn.Linear(32, 16), nn.Tanh()]
    trunk = nn.Sequential(*layers)
    with torch.no_grad():
        for p in trunk.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
            p.requires_grad_(False)
    return trunk


class FineTune(nn.Module):
    """A frozen pretrained trunk and a trainable head, as a fine-tune is written."""

    def __init__(self, trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk = trunk if trunk is not None else _pretrained_trunk()
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _random_trunk() -> FineTune:
    """Frozen, but initialised from the model's seed: every reference model differs."""
    trunk = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh())
    trunk.requires_grad_(False)
    return FineTune(trunk)


def _scores(models: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return np.stack([score_model(m, inputs, labels, Task.MULTICLASS) for m in models])


def test_heads_on_the_cached_trunk_equal_the_whole_networks() -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    subsets = _subsets()
    notes: dict[str, Any] = {}
    cached = train_batched(FineTune, inputs, labels, subsets, RECIPE, seeds=SEEDS, notes=notes)
    whole = train_batched(FineTune, inputs, labels, subsets, RECIPE, seeds=SEEDS,
                          frozen_trunk=False)  # fmt: skip
    assert notes == {"frozen_trunk": "frozen trunk computed once (Sequential)"}
    for ours, theirs in zip(cached, whole, strict=True):
        assert isinstance(ours, FineTune) and not ours.training
        assert torch.equal(ours.trunk[0].weight, theirs.trunk[0].weight)  # never trained
        torch.testing.assert_close(ours.head.weight, theirs.head.weight, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        _scores(cached, inputs, labels), _scores(whole, inputs, labels), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    ("factory", "recipe", "reason"),
    [
        (lambda: FineTune(_pretrained_trunk(dropout=0.2)), RECIPE,
         "trunk's Sequential.2 (Dropout) computes otherwise in training"),
        (lambda: FineTune(_pretrained_trunk(norm=True)),
         Recipe(epochs=2, batch_size=6, learning_rate=0.05),  # no last batch of one record
         "trunk's Sequential.2 (BatchNorm1d) computes otherwise in training"),
        (_random_trunk, RECIPE, "the frozen trunks differ between reference models"),
        (FineTune, Recipe(epochs=1, batch_size=8, dp=DP), "DP-SGD recipes train the whole network"),
    ],
    ids=["dropout", "batch-norm", "per-seed-trunk", "dp-sgd"],
)  # fmt: skip
def test_a_trunk_that_cannot_be_cached_trains_whole_with_the_reason(
    factory: Any, recipe: Recipe, reason: str
) -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    notes: dict[str, Any] = {}
    models = train_batched(factory, inputs, labels, _subsets(), recipe, seeds=SEEDS, notes=notes)
    assert notes["frozen_trunk"].startswith("the whole network runs in every step: ")
    assert reason in notes["frozen_trunk"], notes
    assert len(models) == len(SEEDS)


def test_a_network_that_trains_whole_says_nothing() -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    notes: dict[str, Any] = {}
    plain = lambda: nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU(), nn.Linear(8, CLASSES))  # noqa: E731
    train_batched(plain, inputs, labels, _subsets(), RECIPE, seeds=SEEDS, notes=notes)
    assert notes == {}


def test_the_split_is_read_from_the_traced_forward() -> None:
    inputs, _ = _data(Loss.CROSS_ENTROPY, CLASSES)
    split = split_frozen_prefix(FineTune(), inputs)
    assert isinstance(split, FrozenSplit)
    assert [type(layer) for layer in split.trunk] == [nn.Sequential]  # one frozen layer
    assert [type(layer) for layer in split.head] == [nn.Linear]
    unfrozen = FineTune()
    unfrozen.trunk.requires_grad_(True)
    assert split_frozen_prefix(unfrozen, inputs) == "no frozen layers with weights lead the network"


def test_the_report_says_how_the_trunk_trained(tmp_path: Any) -> None:
    from tiny_audit import load_data

    from privacy_gate.training import run_audit

    result = run_audit(FineTune, load_data(), recipe=RECIPE, reference_models=4, plots=False,
                       out_dir=tmp_path, backend="batched", device="cpu")  # fmt: skip
    training = result.report.to_dict()["audit"]["training"]
    assert training["frozen_trunk"] == "frozen trunk computed once (Sequential)"
