"""DP-SGD's step on the conv fast path: per-record gradients of the stacked network.

A row of the stacked batch holds one record of every model (model ``k``'s channels are
its own record), and the models do not interact, so the gradient of the sum of a row's
K losses is, slice by slice, each model's gradient of its own record's loss. ``vmap`` over
the rows of ``grad`` of that sum gives every model's per-record gradients in one pass;
clipping, noise and the expected-batch-size normalisation are Opacus' (`dp_step`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from privacy_gate.training.batched.dp_clip import clip_factors, refuse_nonfinite
from privacy_gate.training.batched.losses import _loss_terms
from privacy_gate.training.batched.poisson import PoissonStreams
from privacy_gate.training.batched.schedule import _EpochPlan
from privacy_gate.training.recipe import DPSettings, Loss


class ConvDPGradients:
    """Clipped, noised, normalised gradients of K stacked convolutional models."""

    def __init__(
        self,
        template: nn.Module,
        names: list[str],
        model: nn.Module,
        loss: Loss,
        dp: DPSettings,
        streams: PoissonStreams,
        ids: list[int],
    ) -> None:
        self.template, self.names, self.loss, self.dp = template, names, loss, dp
        self.streams, self.ids = streams, ids
        self.model_order = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shapes = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
        per_row: Callable[..., Any] = grad(self._row_loss, has_aux=True)
        self.per_row = vmap(per_row, in_dims=(None, 0, 0), randomness="different")

    def _row_loss(
        self, params: dict[str, torch.Tensor], row: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sum over models of each model's loss on its record of this row, and the K
        losses (each record's own loss: its mean over labels for multi-label BCE)."""
        k = y.shape[0]
        logits = functional_call(self.template, params, (row.unsqueeze(0),)).reshape(k, -1)
        targets = y if self.loss is Loss.CROSS_ENTROPY else y.reshape(k, -1)
        losses = _loss_terms(logits, targets, self.loss).reshape(k, -1).mean(dim=1)
        return losses.sum(), losses

    def __call__(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
        plan: _EpochPlan, t: int, epoch: int,
    ) -> list[torch.Tensor]:  # fmt: skip
        """``x`` ``(W, K*C, *spatial)`` stacked rows, ``y`` ``(W, K, ...)``: the gradients
        of the stacked parameters ``(K, *shape)``, in ``names`` order."""
        grads, losses = self.per_row(params, x, y)  # (W, K, *shape), (W, K)
        weight = plan.weight[t].T  # (W, K)
        refuse_nonfinite(losses.T, weight.T, plan.active[t], epoch, self.ids)
        squared = sum(g.flatten(2).square().sum(dim=2) for g in grads.values())
        assert isinstance(squared, torch.Tensor)
        factor = clip_factors(squared.sqrt(), self.dp.max_grad_norm, weight)
        real = weight > 0
        summed = {
            n: torch.einsum("wk,wk...->k...", factor, torch.where(
                real.view(*real.shape, *([1] * (g.dim() - 2))), g, 0.0))
            for n, g in grads.items()
        }  # fmt: skip
        std = self.dp.noise_multiplier * self.dp.max_grad_norm
        if std:
            for j in plan.active[t].nonzero().flatten().tolist():  # idle models draw none
                noise = self.streams.noise_parts(j, self.shapes, std, weight.dtype)
                for name, part in zip(self.model_order, noise, strict=True):
                    summed[name][j] += part
        return [self.streams.normalise(summed[n]) for n in self.names]
