"""The stacked optimizer: one fused SGD/Adam/AdamW update for the models that step
together, bit-compatible with ``torch.optim``'s single-tensor implementation; per-model
gradient clipping."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from privacy_gate.training.batched.eligibility import BatchingUnsupported
from privacy_gate.training.recipe import Optimizer, Recipe


class _StackedOptimizer:
    """The recipe's optimizer over K stacked models, with per-model step counts.

    The models come sorted by steps per epoch, so ``groups`` (``[start, stop)`` ranges of
    models with equal steps per epoch) are contiguous: the models of a group take their
    steps together, always have equal step counts (hence equal Adam bias corrections),
    and their rows of every stacked ``(K, ...)`` tensor form one contiguous block. One
    call of torch's fused Adam/AdamW/SGD kernel then updates every model with a few
    large tensors (one per parameter and group; a kernel call per model and parameter
    would pay a parallel region for each small tensor). A group without a batch at this
    step is left out of the call, so its parameters, moments and step count stay as they
    are, just as a model whose epoch is over takes no step in `train_one`. The fused
    kernels compute what the single-tensor (``foreach=False``) optimizers of
    `make_optimizer` compute, up to float rounding.
    """

    def __init__(
        self, params: list[torch.Tensor], groups: list[tuple[int, int]], recipe: Recipe
    ) -> None:
        device = params[0].device
        if device.type not in ("cpu", "cuda"):
            raise BatchingUnsupported(f"no fused optimizer kernels on {device.type}")
        self.recipe = recipe
        self.groups = groups
        self.params = [[p[a:b] for p in params] for a, b in groups]
        self.steps = torch.zeros(len(groups), dtype=torch.float32, device=device)
        self.step_views = [self.steps[g] for g in range(len(groups))]
        sgd = recipe.optimizer is Optimizer.SGD
        states = (1 if recipe.momentum != 0 else 0) if sgd else 2
        # SGD: torch starts momentum as a copy of the first gradient; 0 * m + g == g.
        stacked = [[torch.zeros_like(p) for p in params] for _ in range(states)]
        self.states = [[[s[a:b] for s in state] for a, b in groups] for state in stacked]
        self.first = [a for a, _ in groups]

    def group_views(self, grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """``grads`` (stacked like the parameters) split by group."""
        return [[g[a:b] for g in grads] for a, b in self.groups]

    def step(self, grads: list[list[torch.Tensor]], active: torch.Tensor, all_active: bool) -> None:
        """Update the models marked in ``active`` ``(K,)``; ``grads`` from `group_views`."""
        if all_active:
            chosen: Sequence[int] = range(len(self.groups))
            self.steps += 1
        else:
            chosen = active[self.first].nonzero().flatten().tolist()
            if not chosen:
                return
            self.steps[chosen] += 1
        params = [p for g in chosen for p in self.params[g]]
        grad_list = [p for g in chosen for p in grads[g]]
        states = [[s for g in chosen for s in state[g]] for state in self.states]
        r = self.recipe
        if r.optimizer is Optimizer.SGD:
            torch._fused_sgd_(
                params, grad_list, states[0] if states else [], weight_decay=r.weight_decay,
                momentum=r.momentum, lr=r.learning_rate, dampening=0.0, nesterov=False,
                maximize=False, is_first_step=False,
            )  # fmt: skip
            return
        steps = [self.step_views[g] for g in chosen for _ in self.params[g]]
        fused = torch._fused_adamw_ if r.optimizer is Optimizer.ADAMW else torch._fused_adam_
        fused(
            params, grad_list, states[0], states[1], [], steps, lr=r.learning_rate,
            beta1=r.betas[0], beta2=r.betas[1], weight_decay=r.weight_decay, eps=r.eps,
            amsgrad=False, maximize=False,
        )  # fmt: skip


def _clip_per_model(grads: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each model: ``grads`` are stacked ``(K, ...)`` gradients;
    row ``k`` of all of them together is model ``k``'s gradient."""
    norms = [torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)
    coefficient = (max_norm / (total + 1e-6)).clamp_(max=1.0)
    for g in grads:
        g.mul_(coefficient.view(-1, *([1] * (g.dim() - 1))))
