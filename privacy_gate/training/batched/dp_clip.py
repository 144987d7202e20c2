"""What every batched DP-SGD path shares with Opacus' ``DPOptimizer``: the clip factor
of a record, and the error for a batch whose loss is not finite."""

from __future__ import annotations

import torch

from privacy_gate.training.steps import TrainingError

CLIP_EPSILON = 1e-6  # Opacus: max_grad_norm / (norm + 1e-6)


def clip_factors(norms: torch.Tensor, max_grad_norm: float, weight: torch.Tensor) -> torch.Tensor:
    """``min(1, C / (norm + 1e-6))`` per record, times its row weight; exactly 0 for
    padding, even where a padded row's gradient is not finite."""
    factor = (max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0) * weight
    return torch.where(weight > 0, factor, 0.0)


def refuse_nonfinite(
    losses: torch.Tensor, weight: torch.Tensor, active: torch.Tensor, epoch: int, ids: list[int]
) -> None:
    """`train_one_dp`'s error for the first model (caller's index) whose non-empty batch
    has a non-finite loss; ``losses`` and ``weight`` are ``(K, W)``."""
    bad = (~torch.isfinite(losses) & (weight > 0)).any(dim=1) & active
    if bool(bad.any()):
        j = min(bad.nonzero().flatten().tolist(), key=lambda b: ids[b])
        raise TrainingError(
            f"model {ids[j]}: the loss became non-finite in epoch {epoch} of DP-SGD. HINT: "
            "lower the learning rate or check the inputs."
        )
