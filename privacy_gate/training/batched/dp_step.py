"""DP-SGD's step for K stacked models on the general path: per-record gradients
(``torch.func``: ``vmap`` over records inside ``vmap`` over models), each clipped to
``max_grad_norm``, summed, Gaussian noise of std ``noise_multiplier * max_grad_norm`` per
model, divided by the model's expected batch size, exactly as Opacus' ``DPOptimizer``
does with Poisson sampling and a mean loss (a record's gradient is that of its own loss,
as Opacus' grad samples of a mean loss times the batch size are).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, vmap

from privacy_gate.training.batched.dp_clip import clip_factors, refuse_nonfinite
from privacy_gate.training.batched.losses import _loss_terms
from privacy_gate.training.batched.poisson import PoissonStreams
from privacy_gate.training.batched.schedule import _EpochPlan
from privacy_gate.training.recipe import DPSettings, Recipe


class DPGradients:
    """Clipped, noised, normalised gradients ``(K, P)`` of one step of K models."""

    def __init__(
        self,
        base: torch.nn.Module,
        recipe: Recipe,
        dp: DPSettings,
        streams: PoissonStreams,
        shapes: tuple[torch.Size, ...],
        ids: list[int],
        *,
        shared: dict[str, torch.Tensor],
    ) -> None:
        self.base, self.recipe, self.dp, self.streams = base, recipe, dp, streams
        self.shared = shared  # frozen weights every model holds alike (unbatched)
        self.shapes, self.ids = shapes, ids
        per_record: Callable[..., Any] = grad_and_value(self._record_loss)
        inner = vmap(per_record, in_dims=(None, None, 0, 0), randomness="different")
        self.per_sample = vmap(inner, in_dims=(0, 0, 0, 0), randomness="different")

    def _record_loss(
        self,
        params: dict[str, torch.Tensor],
        constants: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """One record's own loss (its mean over labels for multi-label BCE)."""
        state = {**params, **constants, **self.shared}
        logits = functional_call(self.base, state, (x.unsqueeze(0),))
        return _loss_terms(logits, y.unsqueeze(0), self.recipe.loss).mean()

    def __call__(
        self,
        params: dict[str, torch.Tensor],
        constants: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        plan: _EpochPlan,
        t: int,
        epoch: int,
    ) -> torch.Tensor:
        grads, losses = self.per_sample(params, constants, x, y)  # (K, W, *shape), (K, W)
        weight = plan.weight[t]
        refuse_nonfinite(losses, weight, plan.active[t], epoch, self.ids)
        flat = torch.cat([grads[name].flatten(2) for name in params], dim=2)  # (K, W, P)
        norms = torch.linalg.vector_norm(flat, dim=2)
        factor = clip_factors(norms, self.dp.max_grad_norm, weight)
        flat = torch.where(weight.unsqueeze(2) > 0, flat, 0.0)  # padding never enters
        summed = torch.einsum("kw,kwp->kp", factor, flat)
        std = self.dp.noise_multiplier * self.dp.max_grad_norm
        if std:
            for j in plan.active[t].nonzero().flatten().tolist():  # idle models draw none
                summed[j] += self.streams.draw_noise(j, self.shapes, std, summed.dtype)
        return self.streams.normalise(summed)
