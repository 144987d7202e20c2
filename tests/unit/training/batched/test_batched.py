"""The batched ensemble against `train_one`, model by model, with real training.

Subsets of different sizes make the models' step counts and last-batch sizes differ, so
the padding, the per-model loss means, the idle models (no optimizer step once their
epoch is over) and the per-model optimizer step counts are all exercised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.training.batched import (
    BatchingUnsupported,
    batching_problem,
    mlp_fast_path_problem,
    train_batched,
)
from privacy_gate.training.batched.mlp_fast_path import _MLPEnsemble
from privacy_gate.training.batched.mlp_layers import _DropoutOp, _ScaleOp
from privacy_gate.training.batched.schedule import _Order, _plan_epoch
from privacy_gate.training.batched.vmap_ensemble import _UniformDropout
from privacy_gate.training.recipe import Loss, Optimizer, Recipe
from privacy_gate.training.sequential import TrainingError, init_model, train_one

N_RECORDS, N_FEATURES, N_CLASSES, N_LABELS = 120, 6, 3, 3
# Batch 8: 5 records -> one short step; 17 -> 3 steps, last of 1; 40 -> 5 full steps;
# 23 -> 3 steps, last of 7 (17 and 23 step together: one optimizer step group of two).
SUBSET_SIZES = (17, 40, 5, 23)
SEEDS = (11, 12, 13, 14)


def _mlp(outputs: int, dropout: float = 0.0) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(
        nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, outputs)
    )


def _mixed_mlp(outputs: int) -> Callable[[], nn.Module]:
    """Every layer kind of the MLP fast path: nesting, Flatten and Identity, a Linear
    without bias, widening and narrowing Linears, each activation."""
    return lambda: nn.Sequential(
        nn.Flatten(),
        nn.Linear(N_FEATURES, 12),
        nn.GELU(),
        nn.Linear(12, 10, bias=False),
        nn.Tanh(),
        nn.Identity(),
        nn.Sequential(nn.Linear(10, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.SiLU()),
        nn.Linear(8, 6),
        nn.LeakyReLU(0.1),
        nn.Linear(6, 6),
        nn.GELU(approximate="tanh"),
        nn.Linear(6, outputs),
    )


class _Conv(nn.Module):
    """A small Conv1d model over the features seen as a 1-channel sequence."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4 * N_FEATURES, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.unsqueeze(1)))
        return self.head(h.flatten(1))


def _data(loss: Loss, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_RECORDS, N_FEATURES, generator=generator)
    if loss is Loss.CROSS_ENTROPY:
        return x, torch.randint(0, outputs, (N_RECORDS,), generator=generator)
    shape = (N_RECORDS,) if outputs == 1 else (N_RECORDS, outputs)  # binary: (N,) 0/1
    return x, torch.randint(0, 2, shape, generator=generator).float()


def _subsets(sizes: tuple[int, ...] = SUBSET_SIZES) -> list[NDArray[np.intp]]:
    rng = np.random.default_rng(1)
    return [np.sort(rng.choice(N_RECORDS, size, replace=False)) for size in sizes]


RECIPES = {
    "sgd-momentum-wd": dict(optimizer=Optimizer.SGD, learning_rate=0.1, momentum=0.9,
                            weight_decay=0.01),
    "adam-l2": dict(optimizer=Optimizer.ADAM, learning_rate=0.02, weight_decay=0.01),
    "adamw": dict(optimizer=Optimizer.ADAMW, learning_rate=0.02, weight_decay=0.05),
}  # fmt: skip
MODELS = {
    "mlp-multiclass-ce": (Loss.CROSS_ENTROPY, lambda: _mlp(N_CLASSES), N_CLASSES),
    "mlp-binary-bce": (Loss.BINARY_CROSS_ENTROPY, lambda: _mlp(1), 1),
    "mlp-multilabel-bce": (Loss.BINARY_CROSS_ENTROPY, lambda: _mlp(N_LABELS), N_LABELS),
    "mlp-activations-ce": (Loss.CROSS_ENTROPY, lambda: _mixed_mlp(N_CLASSES), N_CLASSES),
    "conv1d-multilabel-bce": (Loss.BINARY_CROSS_ENTROPY, lambda: lambda: _Conv(N_LABELS), N_LABELS),
    "conv1d-multiclass-ce": (Loss.CROSS_ENTROPY, lambda: lambda: _Conv(N_CLASSES), N_CLASSES),
}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("max_grad_norm", [None, 0.05], ids=["no-clip", "clip"])
@pytest.mark.parametrize("recipe_name", list(RECIPES))
def test_final_parameters_match_train_one(
    recipe_name: str, max_grad_norm: float | None, model_name: str
) -> None:
    loss, make_factory, outputs = MODELS[model_name]
    factory = make_factory()
    recipe = Recipe(
        epochs=3, batch_size=8, loss=loss, max_grad_norm=max_grad_norm, **RECIPES[recipe_name]
    )
    inputs, labels = _data(loss, outputs)
    subsets = _subsets()
    fast = mlp_fast_path_problem(factory(), inputs, labels, loss) is None
    assert fast == model_name.startswith("mlp")  # the MLPs really take the fast path
    paths = {"default": train_batched(factory, inputs, labels, subsets, recipe, seeds=SEEDS)}
    if fast:  # ... and the general vmap path agrees with train_one on them too
        paths["vmap"] = train_batched(
            factory, inputs, labels, subsets, recipe, seeds=SEEDS, fast_path=False
        )
    for path, batched in paths.items():
        assert len(batched) == len(SEEDS)
        for k, seed in enumerate(SEEDS):
            sequential = train_one(factory, inputs, labels, subsets[k], recipe, seed=seed)
            initial = init_model(factory, seed)
            assert type(batched[k]) is type(sequential) and not batched[k].training
            got, want = batched[k].state_dict(), sequential.state_dict()
            assert got.keys() == want.keys()
            moved = 0.0
            for name in want:
                torch.testing.assert_close(
                    got[name], want[name], rtol=1e-4, atol=1e-5, msg=f"{path}: {name}"
                )
                moved = max(moved, float((want[name] - initial.state_dict()[name]).abs().max()))
            assert moved > 1e-3  # the models really trained, so agreeing means something


def test_idle_models_keep_their_optimizer_state() -> None:
    """One record vs many: the small model is idle for most steps of every epoch; any
    step it took (momentum, weight decay) would move it away from train_one's result."""
    factory = _mlp(N_CLASSES)
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    subsets = _subsets((1, 60))
    recipe = Recipe(epochs=4, batch_size=8, optimizer=Optimizer.SGD, learning_rate=0.1,
                    momentum=0.9, weight_decay=0.1)  # fmt: skip
    batched = train_batched(factory, inputs, labels, subsets, recipe, seeds=(1, 2))
    for k, seed in enumerate((1, 2)):
        sequential = train_one(factory, inputs, labels, subsets[k], recipe, seed=seed)
        for got, want in zip(batched[k].parameters(), sequential.parameters(), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_dropout_draws_independent_masks_per_model() -> None:
    factory = _mlp(N_CLASSES, dropout=0.5)
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    subset = _subsets((40,))[0]
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=0.02)
    twins = train_batched(factory, inputs, labels, [subset, subset], recipe, seeds=(5, 5))
    first, second = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in twins)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    assert not torch.allclose(first, second)  # same init and data: only the masks differ
    initial = torch.cat([p.detach().flatten() for p in init_model(factory, 5).parameters()])
    assert not torch.allclose(first, initial)
    with torch.no_grad():  # returned in eval mode: dropout off, outputs deterministic
        assert torch.equal(twins[0](inputs), twins[0](inputs))
    again = train_batched(factory, inputs, labels, [subset, subset], recipe, seeds=(5, 5))
    for got, want in zip(again[1].parameters(), twins[1].parameters(), strict=True):
        assert torch.equal(got, want)  # reproducible: the seeds fix the masks too


def test_uniform_dropout_keeps_one_minus_p_and_rescales() -> None:
    torch.manual_seed(0)
    layer = _UniformDropout(0.3)
    out = layer(torch.ones(200_000))
    kept = out != 0
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.005)
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))
    assert torch.equal(layer.eval()(torch.ones(5)), torch.ones(5))


def test_batchnorm_subclasses_are_reported_and_refused() -> None:
    """Plain BatchNorm layers are batched (training/batched/test_batch_norm.py); a subclass
    may have a forward of its own, which the masked replacement would drop silently."""

    class _MyNorm(nn.BatchNorm1d):
        pass

    def factory() -> nn.Module:
        return nn.Sequential(nn.Linear(N_FEATURES, 8), _MyNorm(8), nn.Linear(8, 2))

    reason = batching_problem(factory())
    assert reason is not None and "BatchNorm subclass" in reason and "_MyNorm" in reason
    inputs, labels = _data(Loss.CROSS_ENTROPY, 2)
    with pytest.raises(BatchingUnsupported) as caught:
        train_batched(factory, inputs, labels, _subsets(), Recipe(epochs=1), seeds=SEEDS)
    assert "BatchNorm subclass" in caught.value.reason
    plain = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    assert batching_problem(plain) is None


def test_unbatchable_parameters_are_reported() -> None:
    frozen = _mlp(2)()
    for p in frozen.parameters():
        p.requires_grad_(False)
    assert "no trainable parameters" in (batching_problem(frozen) or "")
    assert "no trainable parameters" in (batching_problem(nn.ReLU()) or "")
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    assert "mix dtypes" in (batching_problem(mixed) or "")


class _CountingCalls(nn.Module):
    """Writes to a buffer in its forward pass (state that padding would corrupt)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 2)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.linear(x)


class _DataDependent(nn.Module):
    """Python control flow on tensor values: vmap cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if float(out.sum()) > -1e9 else -out


class _UnusedHead(nn.Module):
    """A parameter outside the graph: torch's optimizers skip it (no weight decay)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 2)
        self.spare = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.mark.parametrize(
    ("factory", "words"),
    [(_CountingCalls, "calls"), (_DataDependent, "vmap"), (_UnusedHead, "spare.weight")],
    ids=["buffer-update", "data-dependent", "unused-parameter"],
)
def test_models_failing_under_vmap_raise_batching_unsupported(
    factory: Callable[[], nn.Module], words: str
) -> None:
    assert batching_problem(factory()) is None  # only the first step can tell
    inputs, labels = _data(Loss.CROSS_ENTROPY, 2)
    with pytest.raises(BatchingUnsupported) as caught:
        train_batched(factory, inputs, labels, _subsets(), Recipe(epochs=1), seeds=SEEDS)
    assert words in caught.value.reason


def test_nonfinite_loss_names_the_model_and_epoch() -> None:
    factory = _mlp(N_CLASSES)
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    subsets = _subsets()
    only_in_2 = sorted(set(subsets[2].tolist()) - {i for k in (0, 1, 3) for i in subsets[k]})
    recipe = Recipe(epochs=2, batch_size=8)
    outside = sorted(set(range(N_RECORDS)) - {i for s in subsets for i in s})
    inputs[outside[0]] = float("nan")  # in no subset: padding never uses it
    train_batched(factory, inputs, labels, subsets, recipe, seeds=SEEDS)
    inputs[only_in_2[0]] = float("inf")
    with pytest.raises(TrainingError, match=r"model 2: the loss became nan in epoch 0"):
        train_batched(factory, inputs, labels, subsets, recipe, seeds=SEEDS)
    with pytest.raises(TrainingError, match=r"the loss became nan in epoch 0"):
        train_one(factory, inputs, labels, subsets[2], recipe, seed=SEEDS[2])


def test_on_model_done_once_per_model_in_finishing_order() -> None:
    done: list[int] = []
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    recipe = Recipe(epochs=2, batch_size=8)
    models = train_batched(
        _mlp(N_CLASSES), inputs, labels, _subsets(), recipe, seeds=SEEDS, on_model_done=done.append
    )
    assert sorted(done) == [0, 1, 2, 3] and len(models) == 4
    steps = [-(-size // 8) for size in SUBSET_SIZES]
    assert [steps[k] for k in done] == sorted(steps)  # fewer steps finish first


def test_input_checks() -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    factory, recipe = _mlp(N_CLASSES), Recipe(epochs=1)
    assert train_batched(factory, inputs, labels, [], recipe, seeds=[]) == []
    with pytest.raises(TrainingError, match="model 1 has an empty training subset"):
        train_batched(factory, inputs, labels, [np.arange(3), np.arange(0)], recipe, seeds=[1, 2])
    with pytest.raises(ValueError, match="2 subsets but 1 seeds"):
        train_batched(factory, inputs, labels, _subsets()[:2], recipe, seeds=[1])


def _dropout_mlp() -> nn.Module:
    """Dropout fused behind a ReLU, after a Tanh (scale folded into the next Linear),
    before a GELU (scale applied first) and on the logits (scale at the output)."""
    return nn.Sequential(
        nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(16, 8), nn.Tanh(), nn.Dropout(0.2),
        nn.Linear(8, 8), nn.Dropout(0.25), nn.GELU(),
        nn.Linear(8, N_CLASSES), nn.Dropout(0.1),
    )  # fmt: skip


def test_fast_path_gradients_with_dropout_match_autograd() -> None:
    """The hand-written backward against autograd through each model's own modules,
    with the masks the fast path drew, on a step where a model's batch is padded."""
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    subsets = _subsets()
    models = [init_model(_dropout_mlp, seed) for seed in SEEDS]
    assert mlp_fast_path_problem(models[0], inputs, labels, Loss.CROSS_ENTROPY) is None
    order = _Order(list(range(len(SEEDS))), [(k, k + 1) for k in range(len(SEEDS))])
    ensemble = _MLPEnsemble(models, inputs, labels, Recipe(batch_size=8), SEEDS, order)
    dropouts = [op for op in ensemble.ops if isinstance(op, _DropoutOp)]
    assert [op.fused for op in dropouts] == [True, False, False, False]
    assert sum(isinstance(op, _ScaleOp) for op in ensemble.ops) == 2
    plan = _plan_epoch(subsets, SEEDS, 0, 8, torch.device("cpu"))
    assert float(plan.weight[0].sum(dim=1).min()) < 8  # model 2 has 5 records: padded
    ensemble.gradients(plan, 0, 0)
    for k, model in enumerate(models):
        rows = plan.index[0][k]
        weight, count = plan.weight[0][k], plan.count[0][k]
        h, masks = inputs[rows], iter(dropouts)
        for layer in model:
            if isinstance(layer, nn.Dropout):
                mask = next(masks).mask
                assert mask is not None
                h = h * mask[k] / (1 - layer.p)
            else:
                h = layer(h)
        terms = torch.nn.functional.cross_entropy(h, labels[rows], reduction="none")
        model.zero_grad()
        ((terms * weight).sum() / count).backward()
        for op, modules in ensemble.linears:
            layer = modules[k]
            want = layer.weight.grad
            assert want is not None and layer.bias is not None
            got = op.grad_weight[k].T if op.transposed else op.grad_weight[k]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert op.grad_bias is not None
            torch.testing.assert_close(op.grad_bias[k], layer.bias.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.001, 0.999])
def test_fast_path_dropout_masks_keep_one_minus_p(p: float) -> None:
    op = _DropoutOp(p, np.random.PCG64(0), fused=False)
    lanes = 2**16 if op.narrow else 2**32
    assert op.narrow == (0.01 < p < 0.99)
    effective = (op.threshold + lanes // 2) / lanes  # P(lane < threshold)
    assert abs(effective - p) <= 0.5 / lanes  # the documented quantisation of p
    out = op.forward(torch.ones(8, 256, 256))
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # 1 / (1 - p) is applied elsewhere
    kept = float(out.mean())
    assert kept == pytest.approx(1 - p, abs=5 * (p * (1 - p) / out.numel()) ** 0.5)
    again = _DropoutOp(p, np.random.PCG64(0), fused=False).forward(torch.ones(8, 256, 256))
    assert torch.equal(out, again)


class _LinearSubclass(nn.Linear):
    pass


def test_fast_path_problem_names_what_takes_the_vmap_path() -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    ce = Loss.CROSS_ENTROPY

    def problem(model: nn.Module, loss: Loss = ce, y: torch.Tensor = labels) -> str:
        reason = mlp_fast_path_problem(model, inputs, y, loss)
        assert reason is not None
        return reason

    conv = problem(_Conv(N_CLASSES))  # the operation that stops the chain is named
    assert conv.startswith("the model is a _Conv: the forward applies method 'unsqueeze'")
    assert "not one of the fast path's layers" in problem(
        nn.Sequential(nn.Linear(N_FEATURES, 4), nn.LayerNorm(4), nn.Linear(4, N_CLASSES))
    )
    assert "not one of the fast path's layers" in problem(
        nn.Sequential(_LinearSubclass(N_FEATURES, N_CLASSES))
    )
    hooked = _mlp(N_CLASSES)()
    hooked[1].register_forward_hook(lambda *_: None)
    assert "hooks" in problem(hooked)
    frozen = _mlp(N_CLASSES)()
    frozen[0].bias.requires_grad_(False)
    assert "frozen" in problem(frozen)
    assert "records of shape" in problem(nn.Sequential(nn.Linear(N_FEATURES + 1, N_CLASSES)))
    assert "dtype" in problem(_mlp(N_CLASSES)().double())
    assert "outside 0..1" in problem(_mlp(2)())
    bce_labels = torch.zeros(N_RECORDS, 2)
    assert "do not match" in problem(_mlp(3)(), Loss.BINARY_CROSS_ENTROPY, bce_labels)
    assert "p = 1" in problem(nn.Sequential(nn.Linear(N_FEATURES, 3), nn.Dropout(1.0)))


def test_models_off_the_fast_path_are_logged_and_still_batched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, N_CLASSES)
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        models = train_batched(
            lambda: _Conv(N_CLASSES), inputs, labels, _subsets(), Recipe(epochs=1), seeds=SEEDS
        )
    assert len(models) == len(SEEDS)
    assert "general vmap path: MLP fast path: the model is a _Conv" in caplog.text
    assert "conv fast path: the inputs have shape (120, 6)" in caplog.text
