"""The ECG example with Lightning: the 1D ResNet as a LightningModule, fitted by a
Trainer whose `PrivacyAuditCallback` audits it after fit (reference models batched on the
conv fast path, on the Trainer's device).

Run from the repository root:  python examples/ecg/lightning_train.py [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples.ecg.data import load_ecg5000
from examples.ecg.model import make_model
from lightning_callbacks.lightning import PrivacyAuditCallback


class ECGModel(pl.LightningModule):
    """`examples.ecg.model.ResNet1d` with cross-entropy and Adam (what the callback
    reads: the saved hyperparameters, ``loss_fn`` and ``configure_optimizers``)."""

    def __init__(self, width: int = 16, stages: int = 2, learning_rate: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = make_model(width=width, stages=stages)
        self.loss_fn = nn.CrossEntropyLoss()
        self.learning_rate = learning_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self(x), y)  # type: ignore[no-any-return]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/ecg-lightning", help="Trainer root directory")
    parser.add_argument("--reference-models", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-records", type=int, default=None, help="a quick run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pl.seed_everything(0)
    data = load_ecg5000(seed=0, max_records=args.max_records)
    audit = PrivacyAuditCallback(
        holdout=TensorDataset(data.holdout_inputs, data.holdout_labels),  # the non-members
        reference_models=args.reference_models,
        on_fail="warn",  # an example: report a failing gate instead of stopping
        subgroups={name: list(values) for name, values in data.columns.items()},
        seed=0,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[audit],
        default_root_dir=args.out,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    train = DataLoader(TensorDataset(data.train_inputs, data.train_labels), batch_size=64,
                       shuffle=True)  # fmt: skip
    trainer.fit(ECGModel(), train_dataloaders=train)
    figures = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    print({k: v for k, v in figures.items() if k.startswith("privacy_gate/")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
