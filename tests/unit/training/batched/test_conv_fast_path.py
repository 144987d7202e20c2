"""The conv fast path against the general vmap path and `train_one`, on every layer kind
it stacks, and the reasons it gives when a model cannot take it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from privacy_gate.training.batched import train_batched
from privacy_gate.training.batched.conv_fast_path import conv_fast_path_problem
from privacy_gate.training.batched.conv_layers import WindowMax1d, window_max_kernel
from privacy_gate.training.recipe import Loss, Optimizer, Recipe
from privacy_gate.training.sequential import init_model, train_one

N_RECORDS = 80
SUBSET_SIZES = (18, 33, 6, 27)
SEEDS = (31, 32, 33, 34)


class _Residual1d(nn.Module):
    """Grouped, strided and dilated convs, GroupNorm, a residual addition, pooling (a
    tiling MaxPool1d that leaves one step over, an adaptive one)."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 8, 5, padding=2)
        self.norm = nn.GroupNorm(2, 8)
        self.grouped = nn.Conv1d(8, 8, 3, padding="same", groups=4, bias=False)
        self.dilated = nn.Conv1d(8, 8, 3, padding=2, dilation=2)
        self.tile = nn.MaxPool1d(3)
        self.down = nn.Conv1d(8, 4, 3)
        self.pool = nn.AdaptiveMaxPool1d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.GELU(),
                                  nn.Linear(10, outputs))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tile(torch.relu(self.norm(self.stem(x))))
        h = h + torch.tanh(self.dilated(torch.relu(self.grouped(h))))
        return self.head(self.pool(self.down(h)))


class _Small2d(nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 6, (3, 1), padding=(1, 0), bias=False), nn.GroupNorm(3, 6, affine=False),
            nn.LeakyReLU(0.1), nn.Dropout(0.0), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(6 * 4 * 4, outputs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


MODELS: dict[str, tuple[Callable[[int], nn.Module], tuple[int, ...]]] = {
    "residual-1d": (_Residual1d, (2, 16)),
    "small-2d": (_Small2d, (3, 8, 8)),
}
LOSSES = {
    "multiclass-ce": (Loss.CROSS_ENTROPY, 3),
    "multilabel-bce": (Loss.BINARY_CROSS_ENTROPY, 2),
}


def _data(shape: tuple[int, ...], loss: Loss, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(N_RECORDS, *shape, generator=generator)
    if loss is Loss.CROSS_ENTROPY:
        return x, torch.randint(0, outputs, (N_RECORDS,), generator=generator)
    return x, torch.randint(0, 2, (N_RECORDS, outputs), generator=generator).float()


def _subsets() -> list[NDArray[np.intp]]:
    rng = np.random.default_rng(6)
    return [np.sort(rng.choice(N_RECORDS, size, replace=False)) for size in SUBSET_SIZES]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize(
    "recipe_options",
    [dict(optimizer=Optimizer.ADAM, learning_rate=0.01),
     dict(optimizer=Optimizer.SGD, learning_rate=0.05, momentum=0.9, weight_decay=0.01,
          max_grad_norm=0.1)],
    ids=["adam", "sgd-momentum-clip"],
)  # fmt: skip
def test_conv_fast_path_equals_vmap_path_and_train_one(
    model_name: str, loss_name: str, recipe_options: dict[str, object],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    build, shape = MODELS[model_name]
    loss, outputs = LOSSES[loss_name]

    def factory() -> nn.Module:
        return build(outputs)

    inputs, labels = _data(shape, loss, outputs)
    subsets = _subsets()
    recipe = Recipe(epochs=2, batch_size=8, loss=loss, **recipe_options)  # type: ignore[arg-type]
    assert conv_fast_path_problem(factory(), inputs) is None
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        conv = train_batched(factory, inputs, labels, subsets, recipe, seeds=SEEDS)
    assert "takes the conv fast path" in caplog.text
    vmapped = train_batched(factory, inputs, labels, subsets, recipe, seeds=SEEDS, fast_path=False)
    for k, seed in enumerate(SEEDS):
        sequential = train_one(factory, inputs, labels, subsets[k], recipe, seed=seed)
        initial = init_model(factory, seed).state_dict()
        want = sequential.state_dict()
        for path, models in (("conv", conv), ("vmap", vmapped)):
            got = models[k].state_dict()
            for name, value in want.items():
                torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5,
                                           msg=f"{path} model {k}: {name}")  # fmt: skip
        assert max(float((want[n] - initial[n]).abs().max()) for n in want) > 1e-3


@pytest.mark.parametrize("kernel", [2, 3])
def test_window_max_equals_max_pool_values_and_gradients_ties_included(kernel: int) -> None:
    """Integers tie often: max_pool1d's gradient goes to each window's first maximum."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(-2, 3, (4, 6, 17), generator=generator).double()
    weights = torch.randn(4, 6, 17 // kernel, generator=generator, dtype=torch.float64)
    mine, theirs = values.clone().requires_grad_(), values.clone().requires_grad_()
    pooled = WindowMax1d(kernel)(mine)
    (pooled * weights).sum().backward()
    (F.max_pool1d(theirs, kernel) * weights).sum().backward()
    assert torch.equal(pooled, F.max_pool1d(values, kernel))
    assert torch.equal(mine.grad, theirs.grad)  # type: ignore[arg-type]
    assert window_max_kernel(nn.MaxPool1d(kernel)) == kernel


def test_only_tiling_max_pools_are_replaced() -> None:
    assert window_max_kernel(nn.MaxPool1d(2, stride=(2,))) == 2
    others = [nn.MaxPool1d(3, stride=1), nn.MaxPool1d(2, padding=1), nn.MaxPool1d(2, dilation=2),
              nn.MaxPool1d(2, ceil_mode=True), nn.MaxPool1d(2, return_indices=True),
              nn.MaxPool2d(2), nn.AvgPool1d(2)]  # fmt: skip
    for other in others:
        assert window_max_kernel(other) is None, other


class _MixesChannels(nn.Module):
    """A softmax over channels: on stacked channels, model k would read the others'."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.softmax(self.conv(x), dim=1).flatten(1))


class _ReshapesByChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=2).view(-1, 4))


@pytest.mark.parametrize(
    "factory, reason",
    [
        (_MixesChannels, "probe found that the forward does not treat stacked channels"),
        (_ReshapesByChannels, "probe found"),
        (lambda: nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, padding_mode="reflect"),
                               nn.Flatten(), nn.Linear(64, 3)), "pads with 'reflect'"),
        (lambda: nn.Sequential(nn.Conv1d(2, 4, 3, bias=False), nn.LayerNorm(14), nn.Flatten(),
                               nn.Linear(56, 3)), "LayerNorm) holds parameters"),
    ],
    ids=["mixes-channels", "reshapes-by-channels", "reflect-padding", "layernorm"],
)  # fmt: skip
def test_models_the_conv_path_cannot_take_fall_back_to_vmap_with_the_reason(
    factory: Callable[[], nn.Module], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    inputs, labels = _data((2, 16), Loss.CROSS_ENTROPY, 3)
    subsets = _subsets()
    recipe = Recipe(epochs=1, batch_size=8, learning_rate=0.01)
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        models = train_batched(factory, inputs, labels, subsets, recipe, seeds=SEEDS)
    assert "general vmap path" in caplog.text and reason in caplog.text, caplog.text
    sequential = train_one(factory, inputs, labels, subsets[0], recipe, seed=SEEDS[0])
    for name, value in sequential.state_dict().items():  # and the vmap path is right
        torch.testing.assert_close(models[0].state_dict()[name], value, rtol=1e-4, atol=1e-5)


def test_static_reasons() -> None:
    x3 = torch.zeros(4, 2, 16)
    assert "no Conv1d or Conv2d" in (conv_fast_path_problem(nn.Linear(16, 2), x3) or "")
    conv = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Flatten(), nn.Linear(28, 2))
    assert "shape (4, 32)" in (conv_fast_path_problem(conv, torch.zeros(4, 32)) or "")
    assert "differ in dtype" in (conv_fast_path_problem(conv, x3.double()) or "")
    conv[0].weight.requires_grad_(False)
    assert "frozen" in (conv_fast_path_problem(conv, x3) or "")
