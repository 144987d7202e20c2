"""The conv fast path's layers: K models' convolutions, BatchNorm, GroupNorm and Linear
layers as one layer over stacked channels.

A batch of the K models is one tensor ``(W, K * C, *spatial)``: model ``k`` owns
channels ``k * C .. (k + 1) * C - 1``. A convolution with ``groups=g`` becomes one
convolution with ``K * g`` groups (model k's groups are contiguous), GroupNorm with
``G`` groups becomes GroupNorm with ``K * G`` groups, BatchNorm normalises each channel
with its own model's real rows, and a Linear layer after flattening reads model ``k``'s
features from the ``k``-th slice of ``K`` equal slices (flattening ``(K*C, *spatial)``
keeps the model index outermost). Activations, pooling, dropout and additions act per
channel, so the model's own forward runs unchanged on the stacked tensor.

Each stacked parameter is a ``(K, *shape)`` leaf (row ``k`` is model ``k``), as the
`_StackedOptimizer` and per-model clipping expect; autograd gives their gradients.
Tensors keep torch's default (channels-first) layout: channels-last made oneDNN's grouped
convolutions faster in isolation, but BatchNorm, pooling and the layout copies around
them slower, and whole networks (benchmarks/bench_conv.py) slower overall.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from privacy_gate.training.batched.batch_norm import masked_moments, normalise


def _stack(tensors: list[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).contiguous())


def _copy_row(layer: nn.Module, name: str, stacked: torch.Tensor | None, k: int) -> None:
    """``layer.<name> = stacked[k]`` in place (nothing when the layer has no such tensor)."""
    if stacked is not None:
        getattr(layer, name).copy_(stacked[k])


class StackedRows:
    """The row weights ``(W, K)`` and real-row counts ``(K,)`` of the current step,
    shared by a stacked model's BatchNorm layers (set before each training forward)."""

    def __init__(self) -> None:
        self.weight = torch.empty(0)
        self.count = torch.empty(0)
        self.full = False  # every model has a full batch: no padded row, none idle


class StackedConv(nn.Module):
    """K ``Conv1d``/``Conv2d`` layers (zero padding) as one grouped convolution."""

    def __init__(self, convs: list[nn.Conv1d] | list[nn.Conv2d]) -> None:
        super().__init__()
        first = convs[0]
        self.models = len(convs)
        self.one_d = isinstance(first, nn.Conv1d)
        self.weight = _stack([c.weight for c in convs])
        biases: list[torch.Tensor | None] = [getattr(c, "bias") for c in convs]  # noqa: B009
        self.bias = None if biases[0] is None else _stack([b for b in biases if b is not None])
        self.groups = first.groups * self.models
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.convolve = F.conv1d if self.one_d else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.flatten()
        return self.convolve(
            x, self.weight.flatten(0, 1), bias, self.stride, self.padding, self.dilation,
            self.groups,
        )  # fmt: skip

    def export(self, layer: nn.Module, k: int) -> None:
        _copy_row(layer, "weight", self.weight, k)
        _copy_row(layer, "bias", self.bias, k)


class StackedLinear(nn.Module):
    """K ``Linear`` layers on ``(W, K * in)`` (model ``k``'s features in the k-th slice)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.models = len(linears)
        self.weight = _stack([layer.weight for layer in linears])  # (K, out, in)
        biases: list[torch.Tensor | None] = [layer.bias for layer in linears]
        self.bias = None if biases[0] is None else _stack([b for b in biases if b is not None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        h = x.reshape(rows, self.models, -1).transpose(0, 1)  # (K, W, in)
        matrix = self.weight.transpose(1, 2)
        if self.bias is None:
            y = torch.bmm(h, matrix)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), h, matrix)
        return y.transpose(0, 1).reshape(rows, -1)

    def export(self, layer: nn.Module, k: int) -> None:
        _copy_row(layer, "weight", self.weight, k)
        _copy_row(layer, "bias", self.bias, k)


class StackedBatchNorm(nn.Module):
    """K BatchNorm layers of ``C`` channels on ``(W, K * C, *spatial)``: in training,
    each model's channels are normalised with the moments of its real rows; in eval
    mode, with each model's running statistics.

    A step where every model has a full batch runs torch's fused BatchNorm on the
    stacked tensor (its per-channel moments are the models' own); a padded step computes
    masked moments (`batch_norm`) and keeps them in ``moments`` for the running update.
    """

    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm], rows: StackedRows) -> None:
        super().__init__()
        first = layers[0]
        self.models, self.channels = len(layers), first.num_features
        self.eps, self.tracks, self.momentum = first.eps, first.track_running_stats, first.momentum
        self.weight = _stack([b.weight for b in layers]) if first.affine else None
        self.bias = _stack([b.bias for b in layers]) if first.affine else None
        self.running: dict[str, torch.Tensor] = {}
        if self.tracks:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.running[name] = torch.stack([getattr(b, name).detach() for b in layers])
        self.rows = rows
        self.moments: tuple[torch.Tensor, torch.Tensor] | None = None
        self.values = torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = None if self.weight is None else self.weight.flatten()
        shift = None if self.bias is None else self.bias.flatten()
        if not self.training and self.tracks:
            mean = self.running["running_mean"].flatten()
            variance = self.running["running_var"].flatten()
            return normalise(x, mean, variance, self.eps, scale, shift)
        k, c, rows = self.models, self.channels, x.shape[0]
        if not self.training:  # eval without running statistics: torch uses the whole batch
            mean, variance = masked_moments(x, x.new_ones(rows, k * c), x.new_full((k * c,), rows))
            return normalise(x, mean, variance, self.eps, scale, shift)
        if self.rows.full and self._uniform_momentum() is not None:
            return self._native(x, scale, shift)
        weight = self.rows.weight.unsqueeze(2).expand(rows, k, c).reshape(rows, k * c)
        mean, variance = masked_moments(x, weight, self.rows.count.repeat_interleave(c))
        self.moments = (mean.view(k, c), variance.view(k, c))
        self.values = self.rows.count * math.prod(x.shape[2:])
        return normalise(x, mean, variance, self.eps, scale, shift)

    def _uniform_momentum(self) -> float | None:
        """The running-statistics factor when it is the same for all K models (always,
        unless ``momentum=None`` meets models that took different numbers of steps)."""
        if not self.tracks:
            return 0.0
        if self.momentum is not None:
            return self.momentum
        tracked = self.running["num_batches_tracked"]
        if bool((tracked == tracked[0]).all()):
            return 1.0 / (float(tracked[0]) + 1.0)
        return None

    def _native(
        self, x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None
    ) -> torch.Tensor:
        """A step without padding: each channel's batch moments are its model's, so
        torch's fused BatchNorm computes them and moves the running statistics (flat
        views of the stacked buffers) in place."""
        momentum = self._uniform_momentum()
        assert momentum is not None
        self.moments = None
        if not self.tracks:
            return F.batch_norm(x, None, None, scale, shift, True, 0.0, self.eps)
        self.running["num_batches_tracked"].add_(1)
        mean, variance = self.running["running_mean"], self.running["running_var"]
        return F.batch_norm(
            x, mean.view(-1), variance.view(-1), scale, shift, True, momentum, self.eps
        )

    def export(self, layer: nn.Module, k: int) -> None:
        _copy_row(layer, "weight", self.weight, k)
        _copy_row(layer, "bias", self.bias, k)
        for name, stacked in self.running.items():
            _copy_row(layer, name, stacked, k)


class StackedGroupNorm(nn.Module):
    """K GroupNorm layers of ``G`` groups as one GroupNorm of ``K * G`` groups (a group's
    channels are contiguous, so no group spans two models)."""

    def __init__(self, layers: list[nn.GroupNorm]) -> None:
        super().__init__()
        first = layers[0]
        self.groups, self.eps = first.num_groups * len(layers), first.eps
        self.weight = _stack([g.weight for g in layers]) if first.affine else None
        self.bias = _stack([g.bias for g in layers]) if first.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.flatten()
        bias = None if self.bias is None else self.bias.flatten()
        return F.group_norm(x, self.groups, weight, bias, self.eps)

    def export(self, layer: nn.Module, k: int) -> None:
        _copy_row(layer, "weight", self.weight, k)
        _copy_row(layer, "bias", self.bias, k)


class WindowMax1d(nn.Module):
    """``MaxPool1d`` whose windows tile the input (kernel = stride, no padding, no
    dilation), as a max over a view of the windows: the same values, and the gradient
    goes to the first maximum of each window, as with ``max_pool1d``. On the CPU the
    pooling kernel that also returns the indices autograd needs takes several times
    longer than this view's max (benchmarks/bench_lora.py's profile: a fifth of a step)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1] // self.kernel * self.kernel
        windows = x[..., :length].reshape(*x.shape[:-1], -1, self.kernel)
        return windows.max(dim=-1).values

    def export(self, layer: nn.Module, k: int) -> None:
        """Nothing to copy: pooling holds no weights."""


def _single(value: object) -> int | None:
    """A pooling argument as one int (``2`` or ``(2,)``), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, tuple) and len(value) == 1:
        return _single(value[0])
    return None


def window_max_kernel(layer: nn.Module) -> int | None:
    """The kernel of a ``MaxPool1d`` that `WindowMax1d` computes alike, else None."""
    if type(layer) is not nn.MaxPool1d:
        return None
    assert isinstance(layer, nn.MaxPool1d)
    kernel, stride = _single(layer.kernel_size), _single(layer.stride)
    tiles = kernel is not None and stride == kernel and _single(layer.padding) == 0
    plain = _single(layer.dilation) == 1 and not layer.ceil_mode and not layer.return_indices
    return kernel if tiles and plain else None


STACKABLE: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm
)  # fmt: skip
"""The layers with parameters or buffers that the conv fast path stacks (exactly these
classes); every other layer must hold neither."""


def stack_layer(layers: list[nn.Module], rows: StackedRows) -> nn.Module:
    """The stacked layer of K models' layers of one of the `STACKABLE` kinds."""
    kind = type(layers[0])
    if kind in (nn.Conv1d, nn.Conv2d):
        return StackedConv(layers)  # type: ignore[arg-type]
    if kind is nn.Linear:
        return StackedLinear(layers)  # type: ignore[arg-type]
    if kind is nn.GroupNorm:
        return StackedGroupNorm(layers)  # type: ignore[arg-type]
    return StackedBatchNorm(layers, rows)  # type: ignore[arg-type]
