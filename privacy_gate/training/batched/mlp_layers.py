"""The MLP fast path's layers: forward and hand-written backward of stacked Linear,
activation, scaling and dropout layers, compiled from the models' ``nn.Sequential``."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------
# The MLP fast path: stacked Linear weights, forward with baddbmm, backward by hand.


_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU
)  # fmt: skip


class _Op:
    """One layer of the fast path: forward on ``(K, W, features)`` activations and the
    matching backward (gradient with respect to its input)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, grad: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError


class _LinearOp(_Op):
    """``y = alpha * x W^T + b`` for all K models with one ``baddbmm``; ``alpha`` is a
    preceding dropout's ``1 / (1 - p)``, folded into the matrix product.

    Weights are stored ``(K, out, in)``, or transposed ``(K, in, out)`` when the layer
    widens (``out > in``): then the weight gradient is ``x^T dy``, which BLAS computes
    faster than ``dy^T x`` for such shapes.
    """

    def __init__(self, layers: list[nn.Linear], alpha: float, needs_input_grad: bool) -> None:
        self.transposed = layers[0].out_features > layers[0].in_features
        weight = torch.stack([layer.weight.detach() for layer in layers])
        self.weight = weight.transpose(1, 2).contiguous() if self.transposed else weight
        biases: list[torch.Tensor | None] = [layer.bias for layer in layers]
        self.bias: torch.Tensor | None = None
        if all(b is not None for b in biases):
            self.bias = torch.stack([b.detach() for b in biases if b is not None])
        self.grad_weight = torch.zeros_like(self.weight)
        self.grad_bias = None if self.bias is None else torch.zeros_like(self.bias)
        self.alpha = alpha
        self.needs_input_grad = needs_input_grad
        self.ghost = False  # DP-SGD: per-record norms in backward, gradients afterwards
        self.grad_out = torch.empty(0)
        self.record_sq_norms = torch.empty(0)
        self.saved: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.grad_in: torch.Tensor | None = None

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def gradients(self) -> list[torch.Tensor]:
        return [self.grad_weight] if self.grad_bias is None else [self.grad_weight, self.grad_bias]

    def export(self, layer: nn.Linear, k: int) -> None:
        layer.weight.copy_(self.weight[k].T if self.transposed else self.weight[k])
        if self.bias is not None:
            layer.bias.copy_(self.bias[k])

    def _matrix(self) -> torch.Tensor:
        """The right factor of ``x @ W^T``, ``(K, in, out)``."""
        return self.weight if self.transposed else self.weight.transpose(1, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k, w = h.shape[:2]
        if self.out is None or self.out.shape[:2] != (k, w):
            self.out = torch.empty(k, w, self.weight.shape[2 if self.transposed else 1],
                                   dtype=h.dtype)  # fmt: skip
        self.saved = h
        if self.bias is not None:
            return torch.baddbmm(self.bias.unsqueeze(1), h, self._matrix(), alpha=self.alpha,
                                 out=self.out)  # fmt: skip
        return self.out.baddbmm_(h, self._matrix(), beta=0.0, alpha=self.alpha)

    def model_shapes(self) -> list[tuple[int, ...]]:
        """The parameters' shapes in the model (``(out, in)``, ``(out,)``)."""
        _, a, b = self.weight.shape
        shapes: list[tuple[int, ...]] = [(b, a) if self.transposed else (a, b)]
        return shapes if self.bias is None else [*shapes, (self.bias.shape[1],)]

    def record_norms(self, grad: torch.Tensor) -> torch.Tensor:
        """DP-SGD: the squared norm of each record's gradient of this layer's parameters,
        ``(K, W)``, without forming it ("ghost clipping"): record ``i``'s weight gradient
        is ``alpha * outer(dy_i, x_i)``, whose squared Frobenius norm is
        ``alpha^2 |dy_i|^2 |x_i|^2``; its bias gradient is ``dy_i``. Keeps ``dy`` and
        ``x`` for `accumulate_clipped`."""
        h = self.saved
        assert h is not None
        self.grad_out = grad
        out_sq = grad.square().sum(dim=2)
        norms = out_sq * h.square().sum(dim=2) * (self.alpha * self.alpha)
        return norms + out_sq if self.bias is not None else norms

    def accumulate_clipped(self, factor: torch.Tensor) -> None:
        """DP-SGD: the weight and bias gradients as the sum over records of each record's
        gradient times its clip factor ``(K, W, 1)`` (one matrix product, as usual)."""
        h = self.saved
        grad = torch.where(factor > 0, self.grad_out * factor, 0.0)  # padding never enters
        assert h is not None
        if self.transposed:
            self.grad_weight.baddbmm_(h.transpose(1, 2), grad, beta=0.0, alpha=self.alpha)
        else:
            self.grad_weight.baddbmm_(grad.transpose(1, 2), h, beta=0.0, alpha=self.alpha)
        if self.grad_bias is not None:
            torch.sum(grad, dim=1, out=self.grad_bias)
        self.saved = None

    def add_noise(self, k: int, noise: list[torch.Tensor]) -> None:
        """DP-SGD: model ``k``'s noise (model shapes, `model_shapes`) onto its gradients."""
        self.grad_weight[k] += noise[0].T if self.transposed else noise[0]
        if self.grad_bias is not None:
            self.grad_bias[k] += noise[1]

    def backward(self, grad: torch.Tensor) -> torch.Tensor | None:
        if self.ghost:  # DP-SGD: the parameter gradients wait for the clip factors
            self.record_sq_norms = self.record_norms(grad)
            return self._input_gradient(grad)
        h, alpha = self.saved, self.alpha
        assert h is not None
        if self.transposed:  # dW^T = alpha * x^T dy
            self.grad_weight.baddbmm_(h.transpose(1, 2), grad, beta=0.0, alpha=alpha)
        else:  # dW = alpha * dy^T x
            self.grad_weight.baddbmm_(grad.transpose(1, 2), h, beta=0.0, alpha=alpha)
        if self.grad_bias is not None:
            torch.sum(grad, dim=1, out=self.grad_bias)
        self.saved = None
        return self._input_gradient(grad, h)

    def _input_gradient(
        self, grad: torch.Tensor, h: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``dx = alpha * dy W`` (None for the first layer, whose input needs none)."""
        h = self.saved if h is None else h
        assert h is not None
        alpha = self.alpha
        if not self.needs_input_grad:
            return None
        if self.grad_in is None or self.grad_in.shape != h.shape:
            self.grad_in = torch.empty_like(h)
        weight = self.weight.transpose(1, 2) if self.transposed else self.weight
        return self.grad_in.baddbmm_(grad, weight, beta=0.0, alpha=alpha)


class _ReLUOp(_Op):
    """ReLU in place on a Linear's fresh output (else into its own buffer); its backward
    reads the output, which any dropout fused behind it has masked, so one
    ``threshold_backward`` is the gradient of both."""

    def __init__(self, in_place: bool) -> None:
        self.in_place = in_place
        self.out: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.in_place:
            self.out = h.clamp_min_(0.0)
        else:
            self.out = torch.clamp_min(h, 0.0)
        return self.out

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        assert self.out is not None
        result: torch.Tensor = torch.ops.aten.threshold_backward.grad_input(
            grad, self.out, 0.0, grad_input=grad
        )
        return result


class _ActivationOp(_Op):
    """The other activations, out of place, with aten's own backward formulas."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.saved: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Tanh):
            self.saved = torch.tanh(h)
        elif isinstance(layer, nn.Sigmoid):
            self.saved = torch.sigmoid(h)
        else:
            self.saved = h
            if isinstance(layer, nn.GELU):
                return F.gelu(h, approximate=layer.approximate)
            if isinstance(layer, nn.SiLU):
                return F.silu(h)
            assert isinstance(layer, nn.LeakyReLU)
            return F.leaky_relu(h, layer.negative_slope)
        return self.saved

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        layer, saved = self.layer, self.saved
        aten = torch.ops.aten
        result: torch.Tensor
        if isinstance(layer, nn.Tanh):
            result = aten.tanh_backward(grad, saved)
        elif isinstance(layer, nn.Sigmoid):
            result = aten.sigmoid_backward(grad, saved)
        elif isinstance(layer, nn.GELU):
            result = aten.gelu_backward(grad, saved, approximate=layer.approximate)
        elif isinstance(layer, nn.SiLU):
            result = aten.silu_backward(grad, saved)
        else:
            assert isinstance(layer, nn.LeakyReLU)
            result = aten.leaky_relu_backward(grad, saved, layer.negative_slope, False)
        return result


class _ScaleOp(_Op):
    """Multiplies by a dropout's pending ``1 / (1 - p)`` where it cannot be folded into
    the next Linear (before a non-homogeneous activation, or at the output)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.mul_(self.scale)


class _DropoutOp(_Op):
    """Zeroes each element with probability ``p``; the ``1 / (1 - p)`` rescaling is a
    separate scale (folded into the next Linear where possible).

    The mask of an element is one 16-bit lane of a 64-bit word from a numpy ``PCG64``
    stream (four elements per random word, instead of one 32-bit draw per element as
    ``torch.rand`` makes): an element is dropped when its lane is below
    ``round(p * 65536)``, so ``p`` is quantised to a multiple of ``2**-16`` (an
    absolute error below ``7.7e-6``). Where that would shift ``p`` or ``1 - p`` by more
    than 0.1 % of itself (``p`` below about 0.0076 or above 0.9924), 32-bit lanes are
    used instead (error below ``1.2e-10``).
    """

    def __init__(self, p: float, generator: np.random.PCG64, fused: bool) -> None:
        self.generator = generator
        self.fused = fused
        self.narrow = 0.5 / (65536 * min(p, 1 - p)) <= 1e-3
        lanes = 2**16 if self.narrow else 2**32
        # Lanes are read as signed integers, uniform on [-lanes/2, lanes/2): an element is
        # kept when its lane is at least the threshold.
        self.threshold = min(-(lanes // 2) + round(p * lanes), lanes // 2 - 1)
        self.mask: torch.Tensor | None = None

    def _draw(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """A 0/1 keep mask of ``shape`` (one integer comparison per element)."""
        n = math.prod(shape)
        per_word = 4 if self.narrow else 2
        words = self.generator.random_raw(-(-n // per_word))
        lanes = torch.from_numpy(words.view(np.int16 if self.narrow else np.int32))
        if self.mask is None or self.mask.shape != shape:
            self.mask = torch.empty(shape, dtype=dtype)
        return torch.ge(lanes[:n].view(shape), self.threshold, out=self.mask)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mask = self._draw(h.shape, h.dtype)
        return h.mul_(mask) if self.fused else h * mask

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        if self.fused:  # the ReLU before it masks the gradient
            return grad
        assert self.mask is not None
        return grad.mul_(self.mask)


def _compile_ops(
    layer_lists: list[list[nn.Module]], generator: np.random.PCG64
) -> tuple[list[_Op], list[tuple[_LinearOp, list[nn.Linear]]]]:
    """The fast path's ops for K models with identical layer lists, and each Linear op
    with the K modules it exports to."""
    ops: list[_Op] = []
    linears: list[tuple[_LinearOp, list[nn.Linear]]] = []
    pending = 1.0  # a dropout's 1 / (1 - p) not applied yet
    for position, first in enumerate(layer_lists[0]):
        same = [layers[position] for layers in layer_lists]
        previous = ops[-1] if ops else None
        if isinstance(first, nn.Linear):
            modules = [m for m in same if isinstance(m, nn.Linear)]
            op = _LinearOp(modules, alpha=pending, needs_input_grad=bool(linears))
            ops.append(op)
            linears.append((op, modules))
            pending = 1.0
        elif type(first) is nn.ReLU:
            ops.append(_ReLUOp(in_place=isinstance(previous, _LinearOp)))
        elif type(first) is nn.Dropout:
            if first.p == 0.0:
                continue
            fused = isinstance(previous, _ReLUOp) or (
                isinstance(previous, _DropoutOp) and previous.fused
            )
            ops.append(_DropoutOp(first.p, generator, fused=fused))
            pending /= 1.0 - first.p
        elif isinstance(first, _ACTIVATIONS):
            if pending != 1.0 and type(first) is not nn.LeakyReLU:  # ReLU-like: scale commutes
                ops.append(_ScaleOp(pending))
                pending = 1.0
            ops.append(_ActivationOp(first))
        # Identity and Flatten: the inputs are flattened to (K, W, features) up front.
    if pending != 1.0:
        ops.append(_ScaleOp(pending))
    return ops, linears
