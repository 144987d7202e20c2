"""The conv fast path's adapter layers: K PEFT LoRA layers over one frozen base, and frozen
layers every model shares, as one layer over stacked channels (`conv_layers`).

A LoRA layer computes ``base(x) + s * B(A(x))``; ``A`` has the base's kernel, stride and
padding and ``B`` is pointwise, so the layer is one convolution (or matrix product) with
the merged weight ``W + s * B @ A``. Model ``k``'s merged weight is built from its own
``A_k`` and ``B_k`` in every step (a small batched product), and the K merged weights run
as one grouped convolution: one convolution per layer where PEFT runs three, and the
gradients reach ``A_k`` and ``B_k`` through the merge. The base is held once (the first
model's tensors, which every model shares; `shared_weights`).

PEFT is never imported here: a layer is recognised only when the caller's model was built
with PEFT, whose modules are then already loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SHAREABLE",
    "LoraParts",
    "SharedFrozen",
    "StackedLora",
    "active_copy_wrapper",
    "adapter_weight",
    "lora_parts",
]

_BASES = (nn.Conv1d, nn.Conv2d, nn.Linear)
SHAREABLE: tuple[type[nn.Module], ...] = _BASES
"""The frozen layers the conv fast path holds once (`SharedFrozen`)."""


def _peft_class(module_path: str, name: str) -> type | None:
    """A PEFT class when PEFT is loaded (a model built with PEFT has loaded it), else None."""
    loaded = sys.modules.get(module_path)
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) else None


@dataclass(frozen=True)
class LoraParts:
    """One PEFT LoRA layer's pieces for its active adapter."""

    base: nn.Conv1d | nn.Conv2d | nn.Linear
    a: nn.Module
    b: nn.Module
    scaling: float
    adapter: str


def _weight(layer: nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _conv_problem(base: nn.Module, a: nn.Module, b: nn.Module) -> str | None:
    """Why ``base(x) + s * b(a(x))`` is not one convolution with weight ``W + s * B @ A``."""
    assert isinstance(base, nn.Conv1d | nn.Conv2d)
    if type(a) is not type(base) or type(b) is not type(base):
        return "its adapters are not convolutions of the base's kind"
    if base.groups != 1 or base.padding_mode != "zeros" or isinstance(base.padding, str):
        return "its base convolution is grouped, pads by name, or pads otherwise than with zeros"
    assert isinstance(a, nn.Conv1d | nn.Conv2d) and isinstance(b, nn.Conv1d | nn.Conv2d)
    same = (a.kernel_size, a.stride, a.padding, a.dilation, a.groups, a.padding_mode) == (
        base.kernel_size, base.stride, base.padding, base.dilation, 1, "zeros"
    )  # fmt: skip
    ones = (1,) * len(base.kernel_size)
    pointwise = (b.kernel_size, b.stride, b.padding, b.dilation, b.groups) == (
        ones, ones, (0,) * len(ones), ones, 1
    )  # fmt: skip
    if not (same and pointwise) or a.bias is not None or b.bias is not None:
        return "its adapters are not PEFT's (A with the base's geometry, B pointwise, no bias)"
    return None


def lora_parts(module: nn.Module) -> LoraParts | str | None:
    """The pieces of a PEFT LoRA layer the fast path can merge, why it cannot (a string
    naming the feature), or None when ``module`` is not a PEFT LoRA layer."""
    lora_layer = _peft_class("peft.tuners.lora.layer", "LoraLayer")
    if lora_layer is None or not isinstance(module, lora_layer):
        return None
    base = getattr(module, "base_layer", None)
    if type(base) not in _BASES:
        return f"its base layer is a {type(base).__name__}, not a Conv1d, Conv2d or Linear"
    assert isinstance(base, nn.Conv1d | nn.Conv2d | nn.Linear)
    if getattr(module, "disable_adapters", False) or getattr(module, "merged_adapters", []):
        return "its adapters are disabled or merged into the base"
    active = list(getattr(module, "active_adapters", []))
    lora_a, lora_b = getattr(module, "lora_A", {}), getattr(module, "lora_B", {})
    if len(active) != 1 or active[0] not in lora_a or active[0] not in lora_b:
        return f"it has {len(active)} active adapters with weights, not one"
    adapter = active[0]
    if adapter in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(
        adapter, False
    ):
        return "its adapter is a LoRA variant (e.g. DoRA), not plain LoRA"
    dropout = getattr(module, "lora_dropout")[adapter]  # noqa: B009
    if not (type(dropout) is nn.Identity or (type(dropout) is nn.Dropout and dropout.p == 0)):
        return (
            "its LoRA dropout acts on the adapters' input only, which a merged weight cannot "
            "compute"
        )
    a, b = lora_a[adapter], lora_b[adapter]
    if isinstance(base, nn.Linear):
        plain = type(a) is nn.Linear and type(b) is nn.Linear
        biases = getattr(a, "bias", None) is not None or getattr(b, "bias", None) is not None
        if not plain or biases or getattr(module, "fan_in_fan_out", False):
            return "its adapters are not PEFT's plain Linear pair (no bias, no fan_in_fan_out)"
    else:
        problem = _conv_problem(base, a, b)
        if problem is not None:
            return problem
    if any(p.requires_grad for p in base.parameters()):
        return "its base layer trains (LoRA's base is frozen)"
    if not all(p.requires_grad for p in (*a.parameters(), *b.parameters())):
        return "its adapters are frozen"
    if len({p.dtype for p in (*base.parameters(), *a.parameters(), *b.parameters())}) != 1:
        return "its adapters and base differ in dtype"
    scaling = getattr(module, "scaling")[adapter]  # noqa: B009
    if isinstance(scaling, bool) or not isinstance(scaling, int | float):
        return f"its scaling is a {type(scaling).__name__}, not a number"
    return LoraParts(base, a, b, float(scaling), adapter)


def active_copy_wrapper(module: nn.Module) -> bool | None:
    """For PEFT's ``ModulesToSaveWrapper`` (a trained copy of a layer beside the frozen
    original): whether its forward uses the copy (True) or not (False); None for any
    other module."""
    wrapper = _peft_class("peft.utils.other", "ModulesToSaveWrapper")
    if wrapper is None or not isinstance(module, wrapper):
        return None
    active = list(getattr(module, "active_adapters", []))
    copies = getattr(module, "modules_to_save", {})
    return (
        not getattr(module, "disable_adapters", False) and len(active) == 1 and active[0] in copies
    )


def adapter_weight(layer: nn.Module, side: str, adapter: str) -> torch.Tensor:
    """``layer.<side>[adapter].weight`` (``side`` ``"lora_A"`` or ``"lora_B"``), of a PEFT
    LoRA layer or a `StackedLora`."""
    weight = getattr(layer, side)[adapter].weight
    assert isinstance(weight, torch.Tensor)
    return weight


class _Holder(nn.Module):
    """A parameter at ``<name>.weight``, so the stacked layer's parameter names are the
    LoRA layer's (``lora_A.<adapter>.weight``), as DP-SGD's per-model noise order needs."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)


class StackedLora(nn.Module):
    """K LoRA layers over one frozen base: each model's merged weight, then one grouped
    convolution (or one batched matrix product) for all K. The caller has checked that
    the K layers agree in adapter, scaling, rank and base (`conv_fast_path`)."""

    def __init__(self, parts: list[LoraParts]) -> None:
        super().__init__()
        first = parts[0]
        self.models, self.adapter, self.scaling = len(parts), first.adapter, first.scaling
        self._base = (first.base,)  # a tuple: not a submodule, so not among the trained
        self.linear = isinstance(self.base, nn.Linear)
        stack = [torch.stack([_weight(getattr(p, side)).detach() for p in parts]) for side in "ab"]
        self.lora_A = nn.ModuleDict({self.adapter: _Holder(stack[0].contiguous())})
        self.lora_B = nn.ModuleDict({self.adapter: _Holder(stack[1].contiguous())})

    @property
    def base(self) -> nn.Conv1d | nn.Conv2d | nn.Linear:
        """The frozen base layer (the first model's, shared by all)."""
        return self._base[0]

    def merged_weight(self) -> torch.Tensor:
        """``(K, out, in, *kernel)``: model k's ``W + s * B_k @ A_k``."""
        a = adapter_weight(self, "lora_A", self.adapter)  # (K, r, in, *kernel)
        b = adapter_weight(self, "lora_B", self.adapter)  # (K, out, r, *ones)
        delta = torch.bmm(b.flatten(2), a.flatten(2)).view(self.models, -1, *a.shape[2:])
        return self.base.weight.unsqueeze(0) + self.scaling * delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.merged_weight()
        bias = self.base.bias
        if self.linear:
            rows = x.shape[0]
            h = x.reshape(rows, self.models, -1).transpose(0, 1)  # (K, W, in)
            y = torch.bmm(h, weight.transpose(1, 2))
            if bias is not None:
                y = y + bias
            return y.transpose(0, 1).reshape(rows, -1)
        base = self.base
        assert isinstance(base, nn.Conv1d | nn.Conv2d)
        convolve = F.conv1d if isinstance(base, nn.Conv1d) else F.conv2d
        return convolve(
            x, weight.flatten(0, 1), None if bias is None else bias.repeat(self.models),
            base.stride, base.padding, base.dilation, self.models,
        )  # fmt: skip

    @torch.no_grad()
    def perturbed(self, generator: torch.Generator) -> torch.Tensor:
        """Random ``B`` rows for the probe (PEFT starts B at zero, where a wrong adapter
        branch would go unseen); the caller copies them into the models and restores both."""
        b = adapter_weight(self, "lora_B", self.adapter)
        return torch.randn(b.shape, generator=generator, dtype=b.dtype).to(b.device) * 0.1

    def export(self, layer: nn.Module, k: int) -> None:
        for side in ("lora_A", "lora_B"):
            adapter_weight(layer, side, self.adapter).copy_(
                adapter_weight(self, side, self.adapter)[k]
            )


class SharedFrozen(nn.Module):
    """A frozen ``Conv1d``/``Conv2d``/``Linear`` layer that every model holds alike,
    applied to each model's channels (its weights held once, nothing to train)."""

    def __init__(self, layer: nn.Conv1d | nn.Conv2d | nn.Linear, models: int) -> None:
        super().__init__()
        self._layer, self.models = (layer,), models  # a tuple: not a submodule, not trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self._layer[0]
        if isinstance(layer, nn.Linear):
            rows = x.shape[0]
            return F.linear(x.reshape(rows, self.models, -1), layer.weight, layer.bias).reshape(
                rows, -1
            )
        weight = layer.weight.repeat(self.models, *([1] * (layer.weight.dim() - 1)))
        bias = None if layer.bias is None else layer.bias.repeat(self.models)
        convolve = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
        return convolve(
            x, weight, bias, layer.stride, layer.padding, layer.dilation,
            layer.groups * self.models,
        )  # fmt: skip

    def export(self, layer: nn.Module, k: int) -> None:
        """Nothing to copy: the layer did not train."""
