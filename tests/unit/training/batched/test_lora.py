"""K PEFT LoRA fine-tunes of one pretrained base trained as one batched ensemble: equal
to K separate PEFT fine-tunes (`train_one`, the plain per-model loop) to float tolerance,
with the base's weights held once (Linear, Conv1d and Conv2d adapters, plain and DP-SGD),
on the conv fast path (merged adapters, `lora_layers`) and on the general vmap path."""

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
from privacy_gate.training.batched.conv_fast_path import _stacked_layer, conv_fast_path_problem
from privacy_gate.training.batched.conv_layers import StackedRows
from privacy_gate.training.batched.eligibility import BatchingUnsupported
from privacy_gate.training.batched.lora_layers import LoraParts, StackedLora, lora_parts
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


class _Image(_Conv):
    """`_Conv` on ``(N, 1, 2, 3)`` images: no reshape by channel count in the forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def lora_conv(images: bool = False) -> nn.Module:
    """LoRA on a Conv2d and on the Linear head (no modules_to_save)."""
    config = peft.LoraConfig(r=2, target_modules=["conv", "head"], init_lora_weights="gaussian")
    return peft.get_peft_model(_pretrained(_Image() if images else _Conv()), config)


class _Beats(nn.Module):
    """The fine-tune example's shape in small: convolutions, pooling, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def lora_beats(**config: Any) -> Callable[[], nn.Module]:
    """LoRA on both convolutions of a pretrained `_Beats`, a new head trained whole."""

    def factory() -> nn.Module:
        net = _Beats()
        _pretrained(net.encoder)
        settings = dict(r=2, lora_alpha=4, target_modules=["encoder.0", "encoder.3"],
                        modules_to_save=["head"], init_lora_weights="gaussian")  # fmt: skip
        return peft.get_peft_model(net, peft.LoraConfig(**{**settings, **config}))

    return factory


def lora_one_conv() -> nn.Module:
    """LoRA on the first convolution only: the second stays frozen, held once."""
    return lora_beats(target_modules=["encoder.0"])()


def _sequences() -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    return inputs.unsqueeze(1), labels  # (N, 1, 6): one channel of length 6


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = _data(Loss.CROSS_ENTROPY, CLASSES)
    return inputs.view(-1, 1, 2, 3), labels  # (N, 1, 2, 3): the conv fast path takes it


def _path(caplog: pytest.LogCaptureFixture) -> str:
    taken = [r.getMessage() for r in caplog.records if " takes the " in r.getMessage()]
    assert len(taken) == 1, taken
    return "conv" if "conv fast path" in taken[0].split(":")[0] else "vmap"


def _scores(models: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    return np.stack([score_model(m, inputs, labels, Task.MULTICLASS) for m in models])


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


CASES = {  # factory, inputs, the path it takes
    "linear": (lora_mlp, lambda: _data(Loss.CROSS_ENTROPY, CLASSES), "conv"),
    "conv2d-reshaping-forward": (lora_conv, lambda: _data(Loss.CROSS_ENTROPY, CLASSES), "vmap"),
    "conv2d": (lambda: lora_conv(images=True), lambda: _images(), "conv"),
    "conv1d": (lora_beats(), _sequences, "conv"),
    "conv1d-one-frozen": (lora_one_conv, _sequences, "conv"),
}


RUNS = [  # every case as it runs, and those of the conv fast path on the vmap path too
    pytest.param(case, fast, id=f"{case}-{'fast' if fast else 'vmap'}")
    for case, (_, _, path) in CASES.items()
    for fast in ([True, False] if path == "conv" else [True])
]


@pytest.mark.parametrize(("case", "fast_path"), RUNS)
@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp-sgd"])
def test_batched_lora_equals_separate_peft_fine_tunes(
    case: str, fast_path: bool, dp: bool, caplog: pytest.LogCaptureFixture
) -> None:
    factory, data, path = CASES[case]
    recipe = RECIPE
    if dp:
        recipe = Recipe(epochs=2, batch_size=8, learning_rate=0.02,
                        dp=DPSettings(noise_multiplier=0.8, max_grad_norm=0.5))  # fmt: skip
    inputs, labels = data()
    subsets = _subsets()
    notes: dict[str, Any] = {}
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        batched = train_batched(
            factory, inputs, labels, subsets, recipe, seeds=SEEDS, notes=notes,
            fast_path=fast_path,
        )  # fmt: skip
    assert _path(caplog) == (path if fast_path else "vmap")
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
    for name, p in after.items():
        if "lora_B" in name:  # PEFT starts B at zero: it must have trained
            assert float(p.detach().abs().max()) > 1e-3, name
    moved = max(float((p - initial[n]).abs().max().detach()) for n, p in after.items())
    assert moved > 1e-2
    np.testing.assert_allclose(
        _scores(batched, inputs, labels), _scores(separate, inputs, labels), rtol=1e-4, atol=1e-5
    )
    # ... and the base is held once: every model's frozen weights are the first's tensors.
    frozen = [{n: p for n, p in m.named_parameters() if not p.requires_grad} for m in batched]
    held_once = 0
    for name, p in frozen[0].items():
        if "original_module" in name:  # the head PEFT keeps beside the trained copy
            continue
        assert all(other[name].data_ptr() == p.data_ptr() for other in frozen[1:]), name
        held_once += p.numel()
    held_once += sum(p.numel() for n, p in frozen[0].items()
                     if "original_module" in n and all(o[n] is p for o in frozen[1:]))  # fmt: skip
    trained = sum(p.numel() for p in _trainable(batched[0]).values())
    assert notes["shared_frozen_weights"] == (
        f"{held_once} frozen parameters held once for all {len(SEEDS)} models "
        f"({trained} trainable per model)"
    )


def _conv_reason(factory: Callable[[], nn.Module]) -> str | None:
    inputs, _ = _sequences()
    return conv_fast_path_problem(init_model(factory, 0), inputs)


def test_lora_the_merge_cannot_compute_takes_the_vmap_path_with_the_reason() -> None:
    assert _conv_reason(lora_beats()) is None
    assert "LoRA dropout acts on the adapters' input only" in str(
        _conv_reason(lora_beats(lora_dropout=0.1))
    )
    assert "LoRA variant" in str(_conv_reason(lora_beats(use_dora=True)))
    with_bias = _conv_reason(lora_beats(lora_bias=True, init_lora_weights=True))
    assert "not PEFT's (A with the base's geometry, B pointwise, no bias)" in str(with_bias)
    disabled = init_model(lora_beats(), 0)
    with disabled.disable_adapter():
        assert "disabled or merged" in str(conv_fast_path_problem(disabled, _sequences()[0]))


def test_a_frozen_base_that_differs_between_models_is_not_merged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A factory that initialises the base per seed: no base to hold once, so the
    general path trains the models (each with its own frozen weights), with the reason."""

    def per_seed_base() -> nn.Module:
        config = peft.LoraConfig(r=2, target_modules=["encoder.0", "encoder.3"])
        return peft.get_peft_model(_Beats(), config)

    inputs, labels = _sequences()
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        batched = train_batched(per_seed_base, inputs, labels, _subsets(), RECIPE, seeds=SEEDS)
    assert _path(caplog) == "vmap"
    assert "the frozen weights of base_model.model.encoder.0 differ between reference" in (
        caplog.text
    )
    separate = train_one(per_seed_base, inputs, labels, _subsets()[1], RECIPE, seed=SEEDS[1])
    for name, p in _trainable(separate).items():
        torch.testing.assert_close(_trainable(batched[1])[name], p, rtol=1e-4, atol=1e-5)


def test_the_probe_sees_an_adapter_branch_computed_wrongly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PEFT starts every B at zero, where the adapter branch adds nothing: the probe gives
    B random values, so a merge that dropped the branch would be refused, not trained."""
    monkeypatch.setattr(StackedLora, "merged_weight", lambda self: self.base.weight.unsqueeze(0)
                        .expand(self.models, *self.base.weight.shape))  # fmt: skip
    inputs, labels = _sequences()
    with caplog.at_level("INFO", logger="privacy_gate.training"):
        train_batched(lora_beats(), inputs, labels, _subsets(), RECIPE, seeds=SEEDS)
    assert _path(caplog) == "vmap"
    assert "the conv fast path's probe found" in caplog.text
    # The probe put the trained values back: every model's B is PEFT's zero start.
    model = init_model(lora_beats(), SEEDS[0])
    assert all(float(p.abs().max()) == 0 for n, p in model.named_parameters() if "lora_B" in n)


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


def test_a_trainable_adapter_the_forward_never_uses_is_refused() -> None:
    """An inactive adapter left trainable gets no gradient; DP-SGD would still noise it."""
    model = init_model(lora_beats(), 0)
    model.add_adapter("other", peft.LoraConfig(r=2, target_modules=["encoder.0"]))
    model.set_adapter("default")
    for name, p in model.named_parameters():
        if ".other." in name:
            p.requires_grad_(True)
    reason = conv_fast_path_problem(model, _sequences()[0])
    assert "lora_A.other.weight' trains but the forward does not use it" in str(reason)


def test_models_whose_layers_differ_are_refused_not_stacked() -> None:
    """Ranks, or which parameters train, that differ between the K models: the fast path
    refuses (BatchingUnsupported), so the general path decides."""
    name = "base_model.model.encoder.0"
    ranks = [init_model(lora_beats(r=r), 0).get_submodule(name) for r in (2, 3)]
    plan = [lora_parts(layer) for layer in ranks]
    assert isinstance(plan[0], LoraParts)
    with pytest.raises(BatchingUnsupported, match="differs in adapter, scaling or rank"):
        _stacked_layer(name, plan[0], ranks, StackedRows())
    heads = [
        init_model(lora_beats(), seed).get_submodule("base_model.model.head") for seed in (0, 1)
    ]
    copies = [head.modules_to_save["default"] for head in heads]
    copies[1].bias.requires_grad_(False)
    with pytest.raises(BatchingUnsupported, match="trains different parameters"):
        _stacked_layer("head", "stack", copies, StackedRows())
