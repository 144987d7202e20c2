"""The SUPPORT2 MLP (``examples.ehr.model.make_model``) as a LightningModule.

What the callback reads from it: ``save_hyperparameters()`` (reference models are
``SupportModel(**hparams)``), the declared ``loss_fn`` and the Adam optimizer of
``configure_optimizers()`` (together with the Trainer's epochs and the batch size they
make the recipe of the batched fast path), and ``forward`` returning logits.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from examples.ehr.model import N_FEATURES, make_model

__all__ = ["SupportModel"]


class SupportModel(pl.LightningModule):
    """``Linear -> ReLU -> Dropout`` blocks and two output logits (survived / died)."""

    def __init__(
        self,
        n_features: int = N_FEATURES,
        hidden: tuple[int, ...] = (128, 64),
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = make_model(n_features, tuple(hidden), dropout)
        self.loss_fn = nn.CrossEntropyLoss()
        self.learning_rate = learning_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss  # type: ignore[no-any-return]

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        accuracy = (self(x).argmax(dim=1) == y).float().mean()
        self.log("test_accuracy", accuracy)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)
