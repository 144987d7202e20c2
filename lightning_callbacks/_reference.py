"""Train one reference model with a fresh Lightning Trainer (the sequential backend).

The Trainer is of the user's own class hierarchy (``pytorch_lightning`` or
``lightning.pytorch``) and copies the fit's settings, but has no loggers, no checkpoints,
no callbacks but those of the recipe (`DPSGD`), no progress bar and no model summary: a
reference model must not write into the user's experiment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_callbacks._recipe import TrainerSettings
from privacy_gate.training.quiet import quiet_loggers
from privacy_gate.training.reference import TrainFunction

__all__ = ["make_train_fn"]

_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
_NOISE = (
    r".*does not have many workers.*",
    r".*number of training batches.*",
    r".*validation_step.*",
    r".*val_dataloader.*",
    r".*litlogger.*",
)


def quiet_lightning() -> contextlib.AbstractContextManager[None]:
    """Silence Lightning's per-Trainer info lines and data-loader hints while the
    reference models train (dozens of Trainers would bury the audit's own log)."""
    return quiet_loggers(_LIGHTNING_LOGGERS, _NOISE)


def make_train_fn(
    trainer_class: Callable[..., Any],
    settings: TrainerSettings,
    factory: Callable[[], nn.Module],
    pool: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int,
    root_dir: Path,
    callbacks: Callable[[int], list[Any]] | None = None,
) -> TrainFunction:
    """``train_fn(subset, seed)``: a fresh module trained on the pool records ``subset``.

    ``callbacks(seed)`` gives the callbacks that are part of the recipe (e.g. `DPSGD`),
    fresh for each reference model; the user's other callbacks are never copied.
    """
    inputs, labels = pool

    def train(subset: NDArray[np.intp], seed: int) -> nn.Module:
        index = torch.as_tensor(subset, dtype=torch.long)
        torch.manual_seed(seed)  # the initial weights (and dropout) depend only on seed
        model = factory()
        loader = DataLoader(
            TensorDataset(inputs[index], labels[index]),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        with quiet_lightning():
            trainer = trainer_class(
                **settings.trainer_kwargs(),
                logger=False,
                enable_checkpointing=False,
                callbacks=[] if callbacks is None else callbacks(seed),
                enable_progress_bar=False,
                enable_model_summary=False,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                default_root_dir=root_dir,
            )
            trainer.fit(model, train_dataloaders=loader)
        return model

    return train
