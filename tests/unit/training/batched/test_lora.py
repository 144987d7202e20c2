"""K PEFT LoRA fine-tunes of one pretrained base trained as one batched ensemble: equal
to K separate PEFT fine-tunes (`train_one`, the plain per-model loop) to float tolerance,
with the base's weights held once (Linear and Conv2d adapters, plain and DP-SGD)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from test_batched import N_FEATURES, SEEDS, _data, _subsets
from torch import nn

from privacy_gate.signals import Task
from privacy_gate.training.batched import train_batched
from privacy_gate.training.batched.shared_weights import share_frozen_weights, split_state
from privacy_gate.training.recipe import DPSettings, Loss, Recipe
from privacy_gate.training.scoring import score_model
from privacy_gate.training.sequential import init_model, train_one

peft = pytest.importorskip("peft")

CLASSES = 3
RECIPE = Recipe(epochs=3, batch_size=8, learning_rate=0.02)


def _pretrained(module: nn.Module) -> nn.Module:
    """The same weights whatever the seed, as a pretrained file gives."""
    generator = torch.Generator().manual_seed(321)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return module


def lora_mlp() -> nn.Module:
    layers = [nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()]
    base = _pretrained(nn.Sequential(*layers, nn.Linear(32, CLASSES)))
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"],
                             modules_to_save=["4"], init_lora_weights="gaussian")  # fmt: skip
    return peft.get_peft_model(base, config)


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x.view(-1, 1, 2, 3))).flatten(1))


def lora_conv() -> nn.Module:
    config = peft.LoraConfig(r=2, target_modules=["conv", "head"], init_lora_weights="gaussian")
    return peft.get_peft_model(_pretrained(_Conv()), config)


def _scores(models: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return np.stack([score_model(m, inputs, labels, Task.MULTICLASS) for m in models])


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("factory", [lora_mlp, lora_conv], ids=["linear", "conv"])
@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp-sgd"])
def test_batched_lora_equals_separate_peft_fine_tunes(
    factory: Callable[[], nn.Module], dp: bool
) -> None:
    recipe = RECIPE
    if dp:
        recipe = Recipe(epochs=2, batch_size=8, learning_rate=0.02,
                        dp=DPSettings(noise_multiplier=0.8, max_grad_norm=0.5))  # fmt: skip
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    subsets = _subsets()
    notes: dict[str, Any] = {}
    batched = train_batched(factory, inputs, labels, subsets, recipe, seeds=SEEDS, notes=notes)
    separate = [
        train_one(factory, inputs, labels, subset, recipe, seed=seed)
        for subset, seed in zip(subsets, SEEDS, strict=True)
    ]
    for ours, theirs in zip(batched, separate, strict=True):
        mine, reference = _trainable(ours), _trainable(theirs)
        assert mine.keys() == reference.keys() and any("lora_A" in n for n in mine)
        for name in mine:
            torch.testing.assert_close(mine[name], reference[name], rtol=1e-4, atol=1e-5)
    # The adapters moved (a test of equal untrained weights would prove nothing) ...
    initial = _trainable(init_model(factory, SEEDS[0]))
    after = _trainable(separate[0])
    moved = max(float((p - initial[n]).abs().max().detach()) for n, p in after.items())
    assert moved > 1e-2
    np.testing.assert_allclose(
        _scores(batched, inputs, labels), _scores(separate, inputs, labels), rtol=1e-4, atol=1e-5
    )
    # ... and the base is held once: every model's frozen weights are the first's tensors.
    frozen = [{n: p for n, p in m.named_parameters() if not p.requires_grad} for m in batched]
    for other in frozen[1:]:
        assert all(other[n].data_ptr() == p.data_ptr() for n, p in frozen[0].items())
    held_once = sum(p.numel() for p in frozen[0].values())
    trained = sum(p.numel() for p in _trainable(batched[0]).values())
    assert notes["shared_frozen_weights"] == (
        f"{held_once} frozen parameters held once for all {len(SEEDS)} models "
        f"({trained} trainable per model)"
    )


def test_frozen_weights_are_tied_only_where_equal() -> None:
    torch.manual_seed(0)
    first = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    second = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    second[0].load_state_dict(first[0].state_dict())
    first[0].requires_grad_(False)
    second[0].requires_grad_(False)
    second[1].weight.requires_grad_(False)  # frozen here, trainable in first: never tied
    assert share_frozen_weights(first, second) == 12
    assert second[0].weight is first[0].weight and second[0].bias is first[0].bias
    assert second[1].weight is not first[1].weight
    state = split_state([first, second])
    assert set(state.shared) == {"0.weight", "0.bias"}
    assert state.trainable["1.weight"].shape == (2, 2, 3)


def test_frozen_weights_that_differ_are_stacked_per_model() -> None:
    """A factory that initialises its frozen part per seed: nothing is shared."""
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
        model[0].requires_grad_(False)
        models.append(model)
    assert share_frozen_weights(models[0], models[1]) == 0
    state = split_state(models)
    assert not state.shared and state.constants["0.weight"].shape == (2, 3, 3)
    torch.testing.assert_close(state.constants["0.weight"][1], models[1][0].weight)
