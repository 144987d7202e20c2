"""DP-SGD reference models as one batched ensemble, against Opacus on the same model,
data and seeds: the same Poisson batches, per-record clipping, noise and normalisation,
so the trained weights equal `train_one_dp`'s (Opacus' `PrivacyEngine`) to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import nn

pytest.importorskip("opacus")

from privacy_gate.training.batched import train_batched
from privacy_gate.training.batched.dp_step import DPGradients
from privacy_gate.training.batched.poisson import PoissonStreams, dp_steps_per_epoch
from privacy_gate.training.batched.schedule import _plan_epoch
from privacy_gate.training.batched.vmap_ensemble import _Ensemble
from privacy_gate.training.recipe import DPSettings, Loss, Optimizer, Recipe
from privacy_gate.training.sequential import init_model, train_one

N_RECORDS = 240
# 93 records at batch 1 would be 93 loader batches but int(1 / (1 / 93)) = 92 Opacus steps;
# at batch 8: 93 -> 12 batches; 31 -> 4; 60 -> 8 (two models step together).
SUBSET_SIZES = (93, 60, 31, 60)
SEEDS = (41, 42, 43, 44)


def _mlp(outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, outputs))


class _ConvNet(nn.Module):
    """A conv model with BatchNorm: Opacus swaps BatchNorm for GroupNorm in both loops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x.unsqueeze(1)))).flatten(1))


class _StackableConv(nn.Module):
    """Inputs (N, 2, 8): the conv fast path stacks it (BatchNorm becomes GroupNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


def _data(
    loss: Loss, outputs: int, shape: tuple[int, ...] = (6,)
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(N_RECORDS, *shape, generator=generator)
    if loss is Loss.CROSS_ENTROPY:
        return x, torch.randint(0, outputs, (N_RECORDS,), generator=generator)
    return x, torch.randint(0, 2, (N_RECORDS, outputs), generator=generator).float()


def _subsets(sizes: tuple[int, ...] = SUBSET_SIZES) -> list[NDArray[np.intp]]:
    rng = np.random.default_rng(8)
    return [np.sort(rng.choice(N_RECORDS, n, replace=False)) for n in sizes]


CASES = {
    "mlp-ce-sgd": (lambda: _mlp(3), Loss.CROSS_ENTROPY, 3, dict(optimizer=Optimizer.SGD,
                                                                momentum=0.9)),
    "mlp-multilabel-bce-adam": (lambda: _mlp(2), Loss.BINARY_CROSS_ENTROPY, 2,
                                dict(optimizer=Optimizer.ADAM)),
    "conv-batchnorm-ce-adamw": (_ConvNet, Loss.CROSS_ENTROPY, 3, dict(optimizer=Optimizer.ADAMW,
                                                                     weight_decay=0.01)),
    "stacked-conv-ce-adam": (_StackableConv, Loss.CROSS_ENTROPY, 3,
                             dict(optimizer=Optimizer.ADAM)),
    "mlp-float64-ce-adam": (lambda: _mlp(3).double(), Loss.CROSS_ENTROPY, 3,
                            dict(optimizer=Optimizer.ADAM)),
}  # fmt: skip
SHAPES = {"stacked-conv-ce-adam": (2, 8)}
PATH_LOG = {"mlp": "MLP fast path (ghost clipping)", "stacked": "conv fast path (per-row"}


@pytest.mark.filterwarnings("ignore:.*replaced layers Opacus cannot train privately")
@pytest.mark.parametrize("fast_path", [True, False], ids=["default-path", "vmap-path"])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_dp_sgd_equals_opacus_with_noise_on(
    case: str, fast_path: bool, caplog: pytest.LogCaptureFixture
) -> None:
    factory, loss, outputs, options = CASES[case]
    inputs, labels = _data(loss, outputs, SHAPES.get(case, (6,)))
    if "float64" in case:  # the noise is drawn in the parameters' dtype, as Opacus draws it
        inputs = inputs.double()
    subsets = _subsets()
    recipe = Recipe(
        epochs=2, batch_size=8, learning_rate=0.05, loss=loss,
        dp=DPSettings(noise_multiplier=0.8, max_grad_norm=0.7), **options,  # type: ignore[arg-type]
    )  # fmt: skip
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        batched = train_batched(
            factory, inputs, labels, subsets, recipe, seeds=SEEDS, fast_path=fast_path
        )
    for prefix, message in PATH_LOG.items():
        assert (message in caplog.text) == (fast_path and case.startswith(prefix)), caplog.text
    for k, seed in enumerate(SEEDS):
        opacus = train_one(factory, inputs, labels, subsets[k], recipe, seed=seed)
        initial = init_model(factory, seed).state_dict()
        got, want = batched[k].state_dict(), opacus.state_dict()
        assert got.keys() == want.keys()
        for name, value in want.items():
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)
        moved = max(float((want[n] - initial[n]).abs().max()) for n in want if n in initial)
        assert moved > 1e-2  # trained (and noised): agreeing means something


def _one_step_gradients(
    noise_multiplier: float, max_grad_norm: float = 0.5
) -> tuple[torch.Tensor, _Ensemble, PoissonStreams, list[NDArray[np.intp]]]:
    """The batched DP gradients of the first step of two MLPs (noise as given; 0 is
    allowed here, though a recipe requires noise > 0)."""
    inputs, labels = _data(Loss.CROSS_ENTROPY, 3)
    subsets = _subsets((60, 60))
    dp = DPSettings(noise_multiplier=1.0, max_grad_norm=max_grad_norm)
    object.__setattr__(dp, "noise_multiplier", noise_multiplier)
    recipe = Recipe(batch_size=8, dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))
    models = [init_model(lambda: _mlp(3), seed) for seed in (1, 2)]
    from privacy_gate.training.batched.schedule import _Order

    order = _Order([0, 1], [(0, 2)])
    streams = PoissonStreams(subsets, (1, 2), 8)
    ensemble = _Ensemble(models, inputs, labels, recipe, order, streams)
    step = DPGradients(
        ensemble.base, recipe, dp, streams, ensemble.layout.shapes, [0, 1], shared=ensemble.shared
    )
    plan = streams.epoch(torch.device("cpu"))
    index = plan.index[0]
    x, y = inputs[index], labels[index]
    params = ensemble.layout.views(ensemble.flat.detach())
    return step(params, ensemble.constants, x, y, plan, 0, 0), ensemble, streams, subsets


def test_noise_off_one_step_equals_opacus_clipped_mean() -> None:
    """sigma = 0 and the same Poisson batch: the batched gradient is Opacus' DPOptimizer
    gradient (per-sample clipping of GradSampleModule's grad samples, sum, / expected)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    grads, _, streams, subsets = _one_step_gradients(0.0)
    inputs, labels = _data(Loss.CROSS_ENTROPY, 3)
    replay = PoissonStreams(subsets, (1, 2), 8)
    plan = replay.epoch(torch.device("cpu"))
    for k, seed in enumerate((1, 2)):
        rows = plan.index[0, k][plan.weight[0, k] > 0]
        module = GradSampleModule(init_model(lambda: _mlp(3), seed))
        optimizer = DPOptimizer(
            torch.optim.SGD(module.parameters(), lr=1.0), noise_multiplier=0.0,
            max_grad_norm=0.5, expected_batch_size=streams.expected[k],
        )  # fmt: skip
        loss = nn.functional.cross_entropy(module(inputs[rows]), labels[rows])
        loss.backward()
        optimizer.pre_step()
        want = torch.cat([p.grad.flatten() for p in module.parameters()])
        torch.testing.assert_close(grads[k], want, rtol=1e-5, atol=1e-7)


def test_noise_has_std_sigma_c_over_the_expected_batch_size() -> None:
    """The noised minus the noiseless gradient, over every coordinate: mean 0 and std
    sigma * C / expected batch size (about 450 coordinates per model)."""
    sigma, clip = 1.3, 0.5
    noisy, _, streams, _ = _one_step_gradients(sigma, clip)
    clean, *_ = _one_step_gradients(0.0, clip)
    for k in range(2):
        noise = (noisy[k] - clean[k]).double()
        want = sigma * clip / streams.expected[k]
        n = noise.numel()
        assert abs(float(noise.mean())) < 4 * want / math.sqrt(n)
        # the sample std of n normals is within 4 / sqrt(2n) of sigma (relative) w.p. > 0.9999
        assert abs(float(noise.std()) / want - 1) < 4 / math.sqrt(2 * n)


def test_per_record_norms_equal_autograd_per_record() -> None:
    inputs, labels = _data(Loss.CROSS_ENTROPY, 3)
    models = [init_model(lambda: _mlp(3), seed) for seed in (1, 2)]
    recipe = Recipe(batch_size=8, dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))
    from privacy_gate.training.batched.schedule import _Order

    subsets = _subsets((60, 60))
    streams = PoissonStreams(subsets, (1, 2), 8)
    ensemble = _Ensemble(models, inputs, labels, recipe, _Order([0, 1], [(0, 2)]), streams)
    step = ensemble.dp_gradients
    assert step is not None
    rows = torch.from_numpy(np.stack([subsets[0][:5], subsets[1][:5]]))
    params = ensemble.layout.views(ensemble.flat.detach())
    grads, _ = step.per_sample(params, ensemble.constants, inputs[rows], labels[rows])
    norms = torch.linalg.vector_norm(torch.cat([g.flatten(2) for g in grads.values()], 2), dim=2)
    for k, model in enumerate(models):
        for w, record in enumerate(rows[k].tolist()):
            model.zero_grad()
            nn.functional.cross_entropy(model(inputs[record : record + 1]),
                                        labels[record : record + 1]).backward()  # fmt: skip
            want = torch.linalg.vector_norm(
                torch.cat([p.grad.flatten() for p in model.parameters()])
            )
            torch.testing.assert_close(norms[k, w], want, rtol=1e-5, atol=1e-7)


def test_poisson_batches_include_each_record_at_rate_q_and_repeat_with_the_seeds() -> None:
    subsets = _subsets((93, 93))
    streams = PoissonStreams(subsets, (1, 2), 8)
    q = streams.rate[0]
    assert q == 1 / 12 and streams.steps == [dp_steps_per_epoch(93, 8)] * 2 == [12, 12]
    assert dp_steps_per_epoch(93, 1) == 92  # Opacus: int(1 / (1 / 93))
    epochs = [streams.epoch(torch.device("cpu")) for _ in range(60)]
    draws = 60 * 12
    for k in range(2):
        included = np.zeros(N_RECORDS)
        for plan in epochs:
            rows = plan.index[:, k][plan.weight[:, k] > 0].numpy()
            np.add.at(included, rows, 1)
        rate = included[subsets[k]] / draws
        # every record's inclusion count is Binomial(720, 1/12): mean 60, sd 7.4
        assert abs(rate.mean() - q) < 4 * math.sqrt(q * (1 - q) / (draws * 93))
        assert set(np.flatnonzero(included)) <= set(subsets[k].tolist())
    assert not torch.equal(epochs[0].index[:, 0], epochs[0].index[:, 1])  # per model
    assert not torch.equal(epochs[0].index, epochs[1].index)  # per epoch
    again = PoissonStreams(subsets, (1, 2), 8).epoch(torch.device("cpu"))
    assert torch.equal(again.index, epochs[0].index) and torch.equal(again.weight, epochs[0].weight)


def test_plain_recipes_keep_their_schedule() -> None:
    """Not DP: the batches are still `train_one`'s shuffled epochs (no Poisson)."""
    subsets = _subsets((20, 20))
    plan = _plan_epoch(subsets, (1, 2), 0, 8, torch.device("cpu"))
    assert int(plan.weight[:, 0].sum()) == 20


def test_ghost_clipping_norms_equal_autograd_per_record() -> None:
    """The MLP fast path's per-record norms, from |dy|^2 |x|^2 per Linear layer without
    per-record gradients, against one autograd backward per record."""
    from privacy_gate.training.batched.mlp_fast_path import _MLPEnsemble
    from privacy_gate.training.batched.schedule import _Order

    inputs, labels = _data(Loss.CROSS_ENTROPY, 3)
    subsets = _subsets((60, 60))
    recipe = Recipe(batch_size=8, dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))

    def factory() -> nn.Module:  # widening and narrowing layers (both weight layouts)
        return nn.Sequential(nn.Linear(6, 20), nn.GELU(), nn.Linear(20, 5), nn.ReLU(),
                             nn.Linear(5, 3, bias=False))  # fmt: skip

    models = [init_model(factory, seed) for seed in (1, 2)]
    streams = PoissonStreams(subsets, (1, 2), 8)
    ensemble = _MLPEnsemble(
        models, inputs, labels, recipe, (1, 2), _Order([0, 1], [(0, 2)]), streams
    )
    plan = streams.epoch(torch.device("cpu"))
    ensemble.gradients(plan, 0, 0)
    squared = sum(op.record_sq_norms for op, _ in ensemble.linears)
    for k, model in enumerate(models):
        for w in range(int(plan.weight[0, k].sum())):
            record = int(plan.index[0, k, w])
            model.zero_grad()
            nn.functional.cross_entropy(model(inputs[record : record + 1]),
                                        labels[record : record + 1]).backward()  # fmt: skip
            want = sum(float(p.grad.square().sum()) for p in model.parameters())
            assert float(squared[k, w]) == pytest.approx(want, rel=1e-5)


def test_report_epsilon_is_opacus_prv_for_the_schedule_that_ran(tmp_path: object) -> None:
    """1,480 members at batch 16: 93 loader batches, but Opacus runs int(1 / (1 / 93)) =
    92 steps an epoch and accounts them at rate 1/92; the report's steps and epsilon are
    Opacus' own."""
    import sys
    from pathlib import Path

    from opacus.accountants import PRVAccountant

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_audit import load_data, make_model

    from privacy_gate.training.audit import run_audit

    data = load_data(n_records=2960)
    sigma, epochs = 1.2, 3
    recipe = Recipe(epochs=epochs, batch_size=16, learning_rate=0.01,
                    dp=DPSettings(noise_multiplier=sigma, max_grad_norm=1.0))  # fmt: skip
    result = run_audit(make_model, data, recipe=recipe, reference_models=4, plots=False)
    assert result.report.audit.training is not None
    assert result.report.audit.training.backend == "batched"
    dp = result.report.dp_training
    # sampling at 1/93, accounting (as make_private does) at 1 / len(DPDataLoader) = 1/92
    assert dp is not None and dp.sample_rate == 1 / 92 and dp.steps == epochs * 92
    accountant = PRVAccountant()
    accountant.history = [(sigma, 1 / 92, epochs * 92)]
    assert dp.epsilon == pytest.approx(accountant.get_epsilon(delta=dp.delta), rel=1e-6)


@pytest.mark.parametrize("n, batch_size", [(11904, 128), (1480, 16), (60, 8), (5, 8)])
def test_sampling_rate_steps_and_expected_batch_size_are_make_privates(
    n: int, batch_size: int
) -> None:
    """Where the steps round down (11,904 at 128: 93 batches, 92 steps), make_private
    divides by int(N / 92) = 129, not int(N / 93) = 128."""
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    model = nn.Linear(2, 2)
    loader = DataLoader(TensorDataset(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long)),
                        batch_size=batch_size)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, optimizer, private = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
        )  # fmt: skip
    streams = PoissonStreams([np.arange(n)], (0,), batch_size)
    assert streams.rate[0] == private.sample_rate
    assert streams.steps[0] == len(private)
    assert streams.expected[0] == optimizer.expected_batch_size
