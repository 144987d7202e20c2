"""The pieces every training loop shares: the model factory type, seeded initialisation,
the recipe's loss and optimizer, and the training error.

The sequential loop, the DP-SGD loop and the batched ensemble all build on these, so a
model initialised or optimised here is the same in every backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from privacy_gate.errors import InputError
from privacy_gate.training.recipe import Loss, Optimizer, Precision, Recipe

__all__ = [
    "ModelFactory",
    "TrainingError",
    "autocast",
    "compute_loss",
    "grad_scaler",
    "init_model",
    "make_optimizer",
]

ModelFactory = Callable[[], nn.Module]


class TrainingError(InputError):
    """A model that cannot be trained as asked (NaN loss, empty subset, bad outputs)."""


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Mean loss over the batch."""
    if loss is Loss.CROSS_ENTROPY:
        return F.cross_entropy(logits, labels.long())
    targets = labels.to(logits.dtype).reshape(logits.shape)
    return F.binary_cross_entropy_with_logits(logits, targets)


def make_optimizer(parameters: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``parameters`` (single-tensor implementation)."""
    if recipe.optimizer is Optimizer.SGD:
        return torch.optim.SGD(
            parameters,
            lr=recipe.learning_rate,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            foreach=False,
        )
    kind = torch.optim.Adam if recipe.optimizer is Optimizer.ADAM else torch.optim.AdamW
    return kind(
        parameters,
        lr=recipe.learning_rate,
        betas=recipe.betas,
        eps=recipe.eps,
        weight_decay=recipe.weight_decay,
        foreach=False,
    )


def init_model(factory: ModelFactory, seed: int) -> nn.Module:
    """A fresh model whose initial weights depend only on ``seed``."""
    torch.manual_seed(seed)
    return factory()


def autocast(recipe: Recipe, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The recipe's precision for a forward pass and its loss, as Lightning's
    ``precision="bf16-mixed"`` / ``"16-mixed"`` wraps a training step."""
    if recipe.precision is Precision.FLOAT32:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if recipe.precision is Precision.BF16_MIXED else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(recipe: Recipe, device: torch.device) -> torch.amp.GradScaler | None:
    """Dynamic loss scaling for float16 mixed precision (None otherwise)."""
    if recipe.precision is not Precision.FP16_MIXED:
        return None
    return torch.amp.GradScaler(device.type)
