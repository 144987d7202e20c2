"""A max_grad_norm suggestion for DP-SGD: the median per-sample gradient norm.

DP-SGD clips every record's gradient to ``max_grad_norm`` and adds noise proportional to
it. Clipping far above typical norms wastes the noise budget; far below, it biases every
step. The median per-sample norm of the freshly initialised model on the training records
is the usual starting point (the quantile adaptive clipping of Andrew et al. 2021 tracks).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["median_grad_norm"]

SAMPLE_SIZE = 512


def median_grad_norm(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subset: NDArray[np.intp],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int = 0,
    sample_size: int = SAMPLE_SIZE,
) -> float:
    """Median over up to ``sample_size`` records of ``||grad of loss(x_i, y_i)||_2``.

    Args:
        model: the model as DP-SGD would start training it (eval-mode forward is used, so
            dropout does not add noise to the estimate).
        inputs, labels: the pool; ``subset`` are the training records.
        loss: ``loss(logits, labels) -> scalar`` for a batch.
    """
    rng = np.random.default_rng(seed)
    chosen = rng.choice(subset, size=min(sample_size, len(subset)), replace=False)
    index = torch.from_numpy(np.sort(chosen))
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    was_training = model.training
    model.eval()

    def one_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss(logits, y.unsqueeze(0))

    try:
        grads = vmap(grad(one_loss), in_dims=(None, 0, 0))(params, inputs[index], labels[index])
    finally:
        model.train(was_training)
    squared = sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads.values())
    return float(np.median(torch.as_tensor(squared).sqrt().numpy()))
