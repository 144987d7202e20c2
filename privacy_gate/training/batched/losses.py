"""Per-model losses of a stacked batch and the error for a model whose loss is no longer
finite."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from privacy_gate.training.recipe import Loss
from privacy_gate.training.steps import TrainingError


def _raise_if_nonfinite(
    losses: torch.Tensor, active: torch.Tensor, epoch: int, ids: list[int]
) -> None:
    """`train_one`'s error for the first model (caller's index, ``ids``) with a
    non-finite loss on a real batch (idle models' losses are ignored: they take no
    step)."""
    bad = (~torch.isfinite(losses) & active).nonzero().flatten().tolist()
    if bad:
        j = min(bad, key=lambda b: ids[b])
        value = float(losses[j].detach())
        raise TrainingError(
            f"model {ids[j]}: the loss became {value} in epoch {epoch}. HINT: lower the "
            "learning rate, clip gradients (max_grad_norm) or check the inputs."
        )


def _loss_terms(logits: torch.Tensor, labels: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Element-wise loss (no reduction) of one model's batch, as `compute_loss` before
    its mean."""
    if loss is Loss.CROSS_ENTROPY:
        # F.cross_entropy's own arithmetic (log-softmax, then pick the true class), spelt
        # out because its vmap rule goes through a slower Python decomposition.
        log_p = torch.log_softmax(logits, dim=1)
        return -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
    targets = labels.to(logits.dtype).reshape(logits.shape)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
