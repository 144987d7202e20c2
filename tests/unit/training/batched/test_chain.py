"""The MLP fast path recognises the network, not the wrapper: a module whose traced
forward applies its layers one after another trains on the fast path, to the same
weights as the plain ``nn.Sequential`` of those layers; anything else is named."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_batched import N_FEATURES, SEEDS, _CountingCalls, _data, _subsets
from torch import nn

from privacy_gate.training.batched import mlp_fast_path_problem, train_batched
from privacy_gate.training.batched.chain import layer_chain
from privacy_gate.training.recipe import Loss, Recipe

HIDDEN, CLASSES = 16, 3
RECIPE = Recipe(epochs=3, batch_size=8, learning_rate=0.05)


def plain() -> nn.Module:
    return nn.Sequential(
        nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Dropout(0.2), nn.Linear(HIDDEN, CLASSES)
    )


class Wrapped(nn.Module):
    """As every Lightning tutorial writes it: the network in ``self.net``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = plain()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderHead(nn.Module):
    """The same layers, called in a forward of its own, the activation as a function."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(N_FEATURES, HIDDEN)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(F.relu(self.encoder(x), inplace=True)))


def lightning_wrapped(namespace: str) -> Callable[[], nn.Module]:
    lightning = pytest.importorskip(namespace)

    class Classifier(lightning.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = plain()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            return F.cross_entropy(self(batch[0]), batch[1])

    return Classifier


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "factory",
    [Wrapped, EncoderHead, "pytorch_lightning", "lightning.pytorch"],
    ids=["self.net", "encoder-head", "pytorch_lightning", "lightning.pytorch"],
)
def test_a_wrapped_mlp_trains_on_the_fast_path_to_the_plain_mlps_weights(
    factory: Callable[[], nn.Module] | str, caplog: pytest.LogCaptureFixture
) -> None:
    build = lightning_wrapped(factory) if isinstance(factory, str) else factory
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    assert mlp_fast_path_problem(build(), inputs, labels, Loss.CROSS_ENTROPY) is None
    assert [type(layer) for layer in layer_chain(build())] == [  # type: ignore[union-attr]
        nn.Linear, nn.ReLU, nn.Dropout, nn.Linear
    ]  # fmt: skip
    subsets = _subsets()
    with caplog.at_level(logging.INFO, logger="privacy_gate.training"):
        wrapped = train_batched(build, inputs, labels, subsets, RECIPE, seeds=SEEDS)
    assert "takes the MLP fast path" in caplog.text
    reference = train_batched(plain, inputs, labels, subsets, RECIPE, seeds=SEEDS)
    for k, (ours, theirs) in enumerate(zip(wrapped, reference, strict=True)):
        # Same initial weights (same seed, same creation order), same fast-path arithmetic.
        for a, b in zip(_state(ours), _state(theirs), strict=True):
            assert torch.equal(a, b), k
        assert not ours.training
        assert torch.equal(ours(inputs), theirs(inputs))


class _Concatenates(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(N_FEATURES, 4), nn.Linear(N_FEATURES + 4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cat([x, self.a(x)], dim=1))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(N_FEATURES, N_FEATURES), nn.Linear(N_FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x + self.a(x))


class _Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(N_FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return self.a(x)
        return -self.a(x)


class _Unused(Wrapped):
    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Linear(CLASSES, CLASSES)


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.square = nn.Linear(N_FEATURES, N_FEATURES)
        self.head = nn.Linear(N_FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.square(torch.relu(self.square(x)))))


class _LayerNormed(Wrapped):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, 4), nn.LayerNorm(4), nn.Linear(4, 3))


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (_Concatenates(), "not a chain of layers: function 'cat' has other inputs"),
        (_Residual(), "not a chain of layers: function '+' has other inputs"),
        (_Branches(), "cannot be traced by torch.fx (TraceError"),
        (_Unused(), "the parameter 'spare.weight' is not used"),
        (_Shared(), "applies the layer Linear twice"),
        (_LayerNormed(), "layer 1 (LayerNorm) is not one of the fast path's layers"),
        (_CountingCalls(), "reads the tensor 'calls' directly, outside a layer"),
    ],
    ids=["cat", "residual", "control-flow", "unused", "shared", "layer-norm", "buffer-write"],
)
def test_what_stops_the_fast_path_is_named(model: nn.Module, reason: str) -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    problem = mlp_fast_path_problem(model, inputs, labels, Loss.CROSS_ENTROPY)
    assert problem is not None and reason in problem, problem
    assert problem.startswith("the model is a") or "layer 1" in problem


def test_a_hook_on_the_wrapper_keeps_it_off_the_fast_path() -> None:
    """A hook on the wrapper would run in the candidate's training, never in the chain."""
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    model = Wrapped()
    model.register_forward_hook(lambda *_: None)
    problem = mlp_fast_path_problem(model, inputs, labels, Loss.CROSS_ENTROPY)
    assert problem == "Wrapped (Wrapped) has hooks"


class _Counting(Wrapped):
    """Python state in forward (a step counter): the chain would skip it."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self.net(x)


def test_a_forward_that_changes_python_state_keeps_off_the_fast_path() -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    model = _Counting()
    problem = mlp_fast_path_problem(model, inputs, labels, Loss.CROSS_ENTROPY)
    assert problem is not None and "changes the attribute 'steps' of _Counting" in problem
    assert model.steps == 0  # the check's trace is undone
