"""BatchNorm in the batched ensemble: every model normalises with the moments of its own
real rows and keeps its own running statistics, so the trained weights, the buffers and
the eval-mode scores equal `train_one`'s, on the vmap path and on the conv fast path.

Subsets of unequal sizes give ragged last batches and models idle at an epoch's end (no
step, no update of their running statistics)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.signals import Task
from privacy_gate.training.batched import train_batched
from privacy_gate.training.batched.batch_norm import masked_moments, update_running_statistics
from privacy_gate.training.recipe import Optimizer, Recipe
from privacy_gate.training.scoring import score_model
from privacy_gate.training.sequential import TrainingError, init_model, train_one

N_RECORDS, N_CLASSES = 96, 3
# Batch 8: 18 -> 3 steps, last of 2; 40 -> 5 full steps; 7 -> one short step; 27 -> 4
# steps, last of 3. No last batch of one record (BatchNorm1d refuses to train on it).
SUBSET_SIZES = (18, 40, 7, 27)
SEEDS = (21, 22, 23, 24)


class _Conv1dNet(nn.Module):
    """Conv -> BatchNorm1d -> ReLU, a residual block, global pooling, a linear head."""

    def __init__(self, affine: bool = True, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm1d(6, affine=affine, momentum=momentum)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(6, affine=affine, momentum=momentum)
        self.head = nn.Linear(6, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(h + self.bn2(self.conv(h)))
        return self.head(h.mean(dim=2))


class _Conv2dNet(nn.Module):
    def __init__(self, affine: bool = True, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4, affine=affine, momentum=momentum),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4, affine=affine, momentum=momentum),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _mlp_bn(affine: bool = True, momentum: float | None = 0.1) -> nn.Module:
    return nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8, affine=affine, momentum=momentum), nn.ReLU(),
        nn.Linear(8, N_CLASSES),
    )  # fmt: skip


SHAPES: dict[str, tuple[int, ...]] = {"mlp-bn1d": (5,), "conv1d-bn1d": (2, 12),
                                      "conv2d-bn2d": (1, 8, 8)}  # fmt: skip
FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mlp-bn1d": _mlp_bn, "conv1d-bn1d": _Conv1dNet, "conv2d-bn2d": _Conv2dNet,
}  # fmt: skip


def _data(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(N_RECORDS, *shape, generator=generator) * 2.0 + 0.5
    return x, torch.randint(0, N_CLASSES, (N_RECORDS,), generator=generator)


def _subsets(sizes: tuple[int, ...] = SUBSET_SIZES) -> list[NDArray[np.intp]]:
    rng = np.random.default_rng(4)
    return [np.sort(rng.choice(N_RECORDS, size, replace=False)) for size in sizes]


def _assert_same_state(got: nn.Module, want: nn.Module, initial: nn.Module, label: str) -> None:
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for name, value in want_state.items():
        if value.dtype == torch.int64:  # num_batches_tracked: steps taken, exactly
            assert torch.equal(got_state[name], value), f"{label}: {name}"
            continue
        torch.testing.assert_close(got_state[name], value, rtol=1e-4, atol=1e-5,
                                   msg=f"{label}: {name}")  # fmt: skip
    moved = max(
        float((want_state[n] - initial.state_dict()[n]).abs().max())
        for n in want_state
        if "running" in n
    )
    assert moved > 1e-2  # the running statistics really moved


@pytest.mark.parametrize("model_name", list(FACTORIES))
@pytest.mark.parametrize(
    "variant", [{}, {"affine": False}, {"momentum": None}], ids=["affine", "no-affine", "cma"]
)
@pytest.mark.parametrize("fast_path", [True, False], ids=["default-path", "vmap-path"])
def test_batch_norm_models_match_train_one(
    model_name: str, variant: dict[str, object], fast_path: bool, caplog: pytest.LogCaptureFixture
) -> None:
    def factory() -> nn.Module:
        return FACTORIES[model_name](**variant)

    inputs, labels = _data(SHAPES[model_name])
    subsets = _subsets()
    recipe = Recipe(epochs=3, batch_size=8, optimizer=Optimizer.SGD, learning_rate=0.05,
                    momentum=0.9)  # fmt: skip
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        batched = train_batched(
            factory, inputs, labels, subsets, recipe, seeds=SEEDS, fast_path=fast_path
        )
    conv = fast_path and model_name.startswith("conv")
    assert ("takes the conv fast path" in caplog.text) == conv, caplog.text
    for k, seed in enumerate(SEEDS):
        sequential = train_one(factory, inputs, labels, subsets[k], recipe, seed=seed)
        _assert_same_state(batched[k], sequential, init_model(factory, seed), f"model {k}")
        # Eval-mode scores use the running statistics: equal buffers, equal scores.
        np.testing.assert_allclose(
            score_model(batched[k], inputs, labels, Task.MULTICLASS),
            score_model(sequential, inputs, labels, Task.MULTICLASS),
            rtol=1e-4,
            atol=1e-4,
        )


def test_masked_moments_equal_the_moments_of_the_real_rows() -> None:
    """Against numpy on the real rows alone: padded rows hold huge values, which would
    show in any moment they leaked into."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3, 7))
    weight = np.ones((10, 3))
    weight[6:] = 0.0
    x[6:] = 1e6
    mean, variance = masked_moments(
        torch.from_numpy(x), torch.from_numpy(weight), torch.full((3,), 6.0, dtype=torch.float64)
    )
    real = x[:6].transpose(1, 0, 2).reshape(3, -1)
    np.testing.assert_allclose(mean.numpy(), real.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(variance.numpy(), real.var(axis=1), rtol=1e-12)


def test_running_statistics_move_like_torch_batch_norm_for_active_models_only() -> None:
    """One training forward of nn.BatchNorm1d on each model's real rows against the
    stacked update: model 0 steps, model 1 is idle and keeps its buffers."""
    torch.manual_seed(0)
    layers = [nn.BatchNorm1d(4, momentum=0.3) for _ in range(2)]
    x = torch.randn(2, 9, 4, 5)
    for layer in layers:
        layer.running_mean.uniform_()
        layer.running_var.uniform_(0.5, 2.0)
    before = [{n: b.clone() for n, b in layer.named_buffers()} for layer in layers]
    stacked = {n: torch.stack([b[n] for b in before]) for n in before[0]}
    moments = [masked_moments(x[k], torch.ones(9, 4), torch.full((4,), 9.0)) for k in range(2)]
    update_running_statistics(
        stacked, layers[0], torch.stack([m for m, _ in moments]),
        torch.stack([v for _, v in moments]), torch.full((2,), 45.0), torch.tensor([True, False]),
    )  # fmt: skip
    layers[0].train()(x[0])
    for name, buffer in layers[0].named_buffers():
        torch.testing.assert_close(stacked[name][0], buffer, msg=name)
    for name, buffer in before[1].items():
        assert torch.equal(stacked[name][1], buffer), name


@pytest.mark.parametrize("fast_path", [True, False], ids=["default-path", "vmap-path"])
def test_a_last_batch_of_one_record_fails_as_in_train_one(fast_path: bool) -> None:
    inputs, labels = _data(SHAPES["mlp-bn1d"])
    subsets = _subsets((17, 8))  # batch 8: 17 leaves a last batch of one record
    recipe = Recipe(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        train_one(_mlp_bn, inputs, labels, subsets[0], recipe, seed=1)
    with pytest.raises(TrainingError, match="one value per channel"):
        train_batched(_mlp_bn, inputs, labels, subsets, recipe, seeds=(1, 2), fast_path=fast_path)


def test_batch_size_one_keeps_idle_models_buffers() -> None:
    """Batch 1: an idle model's count is clamped to 1 like a full one's; it must still
    take no BatchNorm update (the fused branch runs only where every row is real)."""
    inputs, labels = _data(SHAPES["conv2d-bn2d"])
    subsets = _subsets((3, 5))
    recipe = Recipe(epochs=2, batch_size=1, optimizer=Optimizer.SGD, learning_rate=0.01)
    batched = train_batched(_Conv2dNet, inputs, labels, subsets, recipe, seeds=(1, 2))
    for k, seed in enumerate((1, 2)):
        sequential = train_one(_Conv2dNet, inputs, labels, subsets[k], recipe, seed=seed)
        _assert_same_state(batched[k], sequential, init_model(_Conv2dNet, seed), f"model {k}")
