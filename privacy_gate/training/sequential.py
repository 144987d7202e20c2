"""The reference: train one model at a time with the standard PyTorch loop.

Any ``nn.Module`` works here. The batched ensemble must reproduce exactly this loop
(same initialisation, data order, loss, clipping and optimizer) for every model.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.training.data_order import epoch_batches
from privacy_gate.training.dp_sgd import train_one_dp
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.steps import (
    ModelFactory,
    TrainingError,
    autocast,
    compute_loss,
    grad_scaler,
    init_model,
    make_optimizer,
)

__all__ = [
    "ModelFactory",
    "TrainingError",
    "compute_loss",
    "init_model",
    "make_optimizer",
    "train_one",
]


def train_one(
    factory: ModelFactory,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subset: NDArray[np.intp],
    recipe: Recipe,
    *,
    seed: int,
    model_name: str = "model",
    device: torch.device | None = None,
) -> nn.Module:
    """Train one model on ``inputs[subset]`` with the recipe.

    Args:
        factory: builds an untrained model.
        inputs: ``(n_records, ...)`` features of the whole pool.
        labels: ``(n_records, ...)`` labels of the whole pool.
        subset: indices of the records this model trains on.
        seed: initialisation and data-order seed of this model.
        device: where it trains (default: the CPU); it is initialised on the CPU first,
            so its initial weights do not depend on the device.
    """
    if len(subset) == 0:
        raise TrainingError(
            f"{model_name} has an empty training subset. HINT: the audit pool "
            "needs at least 2 patients."
        )
    model = init_model(factory, seed)
    if device is not None:
        model = model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise TrainingError(f"{model_name} has no trainable parameters.")
    if recipe.dp is not None:
        return train_one_dp(
            model, inputs, labels, subset, recipe, seed=seed, model_name=model_name, device=device
        )
    optimizer = make_optimizer(parameters, recipe)
    place = device or torch.device("cpu")
    scaler = grad_scaler(recipe, place)
    model.train()
    for epoch in range(recipe.epochs):
        for batch in epoch_batches(subset, epoch=epoch, seed=seed, batch_size=recipe.batch_size):
            index = torch.from_numpy(batch)
            optimizer.zero_grad(set_to_none=True)
            x, y = inputs[index], labels[index]
            if device is not None:
                x, y = x.to(device), y.to(device)
            with autocast(recipe, place):
                loss = compute_loss(model(x), y, recipe.loss)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"{model_name}: the loss became {float(loss.detach())} in epoch {epoch}. "
                    "HINT: lower the learning rate, clip gradients (max_grad_norm) or check "
                    "the inputs."
                )
            if scaler is None:
                loss.backward()  # type: ignore[no-untyped-call]
            else:
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.unscale_(optimizer)
            if recipe.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, recipe.max_grad_norm)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
    return model
