"""Mixed precision follows the recipe: ``precision: bf16-mixed`` runs forwards under
``torch.autocast`` in `train_one` and on both batched paths; ``16-mixed`` trains with a
loss scaler one model at a time (the batched optimizer cannot skip one model's step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from privacy_gate.errors import ConfigError, InputError
from privacy_gate.training.backends import choose_backend
from privacy_gate.training.batched import BatchingUnsupported, train_batched
from privacy_gate.training.recipe import DPSettings, Precision, Recipe, parse_recipe
from privacy_gate.training.reference import Fallback
from privacy_gate.training.sequential import train_one

SEEN: list[torch.dtype] = []


class _Record(nn.Module):
    """Records the dtype its input arrives in during training (no parameters: the conv
    path allows it; its probe runs in eval mode, in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            SEEN.append(x.dtype)
        return x


def _conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1, bias=False), _Record(), nn.BatchNorm1d(4), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 3),
    )  # fmt: skip


def _data() -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(60, 1, 8, generator=generator)
    labels = torch.randint(0, 3, (60,), generator=generator)
    rng = np.random.default_rng(0)
    return inputs, labels, [np.sort(rng.choice(60, n, replace=False)) for n in (20, 26)]


def test_recipe_precision_is_validated_and_keeps_float32_cache_keys() -> None:
    assert parse_recipe({"precision": "bf16-mixed"}).precision is Precision.BF16_MIXED
    assert "precision" not in Recipe().to_dict()  # float32 recipes keep their cache keys
    assert Recipe(precision="16-mixed").to_dict()["precision"] == "16-mixed"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision"):
        parse_recipe({"precision": "fp8"})
    with pytest.raises(ConfigError, match="DP-SGD loop"):
        Recipe(precision=Precision.BF16_MIXED, dp=DPSettings(noise_multiplier=1, max_grad_norm=1))


@pytest.mark.parametrize("path", ["train_one", "conv"])
def test_bf16_mixed_runs_the_forward_in_bfloat16(path: str) -> None:
    inputs, labels, subsets = _data()
    mixed = Recipe(epochs=1, batch_size=8, learning_rate=0.01, precision=Precision.BF16_MIXED)
    plain = Recipe(epochs=1, batch_size=8, learning_rate=0.01)
    trained = {}
    for name, recipe in (("mixed", mixed), ("plain", plain)):
        SEEN.clear()
        if path == "train_one":
            trained[name] = train_one(_conv, inputs, labels, subsets[0], recipe, seed=1)
        else:
            trained[name] = train_batched(_conv, inputs, labels, subsets, recipe, seeds=(1, 2))[0]
        assert set(SEEN) == {torch.bfloat16 if recipe is mixed else torch.float32}
    want = train_one(_conv, inputs, labels, subsets[0], mixed, seed=1).state_dict()
    got = trained["mixed"].state_dict()
    for name, value in want.items():  # bfloat16 carries ~3 digits: a loose agreement
        if value.is_floating_point():
            torch.testing.assert_close(got[name], value, rtol=0.05, atol=0.02, msg=name)
    moved = trained["plain"].state_dict()["0.weight"] - got["0.weight"]
    assert float(moved.abs().max()) > 1e-5  # the precision changed the arithmetic


def test_fp16_mixed_trains_one_at_a_time_with_the_reason() -> None:
    inputs, labels, subsets = _data()
    recipe = Recipe(epochs=2, batch_size=8, learning_rate=0.01, precision=Precision.FP16_MIXED)
    model = train_one(_conv, inputs, labels, subsets[0], recipe, seed=1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert choose_backend(_conv, "auto", recipe) == ("sequential", Fallback.FP16.value)
    with pytest.raises(InputError, match="float16 mixed precision"):
        choose_backend(_conv, "batched", recipe)
    with pytest.raises(BatchingUnsupported, match="float16 mixed precision"):
        train_batched(_conv, inputs, labels, subsets, recipe, seeds=(1, 2))


def test_mixed_precision_models_off_the_conv_path_are_not_vmapped() -> None:
    """Under torch.func.vmap autocast leaves convolutions in float32: such a model would
    not train as the candidate did, so it trains one at a time (with the reason)."""

    class _Unstackable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 4, 3, padding=1)
            self.head = nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.softmax(self.conv(x), dim=1).flatten(1))  # mixes channels

    inputs, labels, subsets = _data()
    recipe = Recipe(epochs=1, batch_size=8, precision=Precision.BF16_MIXED)
    with pytest.raises(BatchingUnsupported, match=r"under torch\.func\.vmap autocast"):
        train_batched(_Unstackable, inputs, labels, subsets, recipe, seeds=(1, 2))
