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

from privacy_gate.training.batched.losses import _loss_terms
from privacy_gate.training.batched.poisson import PoissonStreams
from privacy_gate.training.batched.schedule import _EpochPlan
from privacy_gate.training.recipe import DPSettings, Recipe
from privacy_gate.training.steps import TrainingError

_CLIP_EPSILON = 1e-6  # Opacus: max_grad_norm / (norm + 1e-6)


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
    ) -> None:
        self.base, self.recipe, self.dp, self.streams = base, recipe, dp, streams
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
        logits = functional_call(self.base, {**params, **constants}, (x.unsqueeze(0),))
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
        self._check_finite(losses, weight, plan.active[t], epoch)
        flat = torch.cat([grads[name].flatten(2) for name in params], dim=2)  # (K, W, P)
        norms = torch.linalg.vector_norm(flat, dim=2)
        factor = (self.dp.max_grad_norm / (norms + _CLIP_EPSILON)).clamp(max=1.0) * weight
        summed = torch.einsum("kw,kwp->kp", factor, flat)
        std = self.dp.noise_multiplier * self.dp.max_grad_norm
        if std:
            for j in plan.active[t].nonzero().flatten().tolist():  # idle models draw none
                summed[j] += self.streams.draw_noise(j, self.shapes, std).to(summed)
        expected = torch.tensor(self.streams.expected, dtype=summed.dtype, device=summed.device)
        return summed / expected.clamp(min=1).unsqueeze(1)

    def _check_finite(
        self, losses: torch.Tensor, weight: torch.Tensor, active: torch.Tensor, epoch: int
    ) -> None:
        """`train_one_dp`'s error: a non-empty batch whose mean loss is not finite."""
        real = weight > 0
        bad = (~torch.isfinite(losses) & real).any(dim=1) & active
        if bool(bad.any()):
            j = min(bad.nonzero().flatten().tolist(), key=lambda b: self.ids[b])
            raise TrainingError(
                f"model {self.ids[j]}: the loss became non-finite in epoch {epoch} of DP-SGD. "
                "HINT: lower the learning rate or check the inputs."
            )
