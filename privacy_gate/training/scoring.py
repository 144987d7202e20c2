"""Membership scores from model outputs: the logit-scaled confidence in the true label.

``s = log p_true - log(1 - p_true)``, computed from logits without ever forming ``p``
(which saturates at 1 in float32 for confident models):

- multi-class (logits ``(N, C)``, integer labels): ``s = z_y - logsumexp_{j != y} z_j``;
- binary (one logit per record, labels 0/1): ``s = z`` for label 1, ``-z`` for label 0;
- multi-label (logits ``(N, L)``, 0/1 targets): the sum over labels of each label's
  signed logit, i.e. of the logit-scaled confidence in each label's true value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.errors import InputError
from privacy_gate.signals import Task

__all__ = ["membership_scores", "score_model"]


def membership_scores(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
    """Logit-scaled confidence in the true label, ``(N,)`` float64.

    >>> z = torch.tensor([[2.0, 0.0, 0.0]])
    >>> round(float(membership_scores(z, torch.tensor([0]), Task.MULTICLASS)[0]), 4)
    1.3069
    """
    z = logits.detach().to(torch.float64)
    if task is Task.MULTICLASS:
        if z.ndim != 2 or labels.ndim != 1:
            raise InputError(
                f"Multi-class scoring needs logits (N, C) and labels (N,). Got "
                f"logits {tuple(z.shape)} and labels {tuple(labels.shape)}."
            )
        y = labels.long().unsqueeze(1)
        true = z.gather(1, y).squeeze(1)
        others = z.scatter(1, y, float("-inf"))
        return true - torch.logsumexp(others, dim=1)
    signed = z.reshape(len(z), -1) * (2.0 * labels.to(torch.float64).reshape(len(z), -1) - 1.0)
    if task is Task.BINARY and signed.shape[1] != 1:
        raise InputError(f"Binary scoring needs one logit per record. Got {tuple(z.shape)}.")
    return signed.sum(dim=1)


def score_model(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    task: Task,
    *,
    batch_size: int = 1024,
    augmentations: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
) -> NDArray[np.float64]:
    """Scores of every record under ``model`` in eval mode, ``(N,)``; with test-time
    augmentations, the mean score over the identity and each augmentation."""
    views: list[Callable[[torch.Tensor], torch.Tensor]] = [lambda x: x, *augmentations]
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total = torch.zeros(len(inputs), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            for view in views:
                total[start : start + len(x)] += membership_scores(model(view(x)), y, task).cpu()
    model.train(was_training)
    scores = (total / len(views)).numpy()
    if not np.isfinite(scores).all():
        raise InputError(
            "The model produced NaN or infinite outputs while scoring. HINT: the "
            "training diverged; lower the learning rate or clip gradients."
        )
    return scores
