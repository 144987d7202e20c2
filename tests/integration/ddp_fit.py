"""A real multi-process fit (DDP over gloo, on CPU) with `PrivacyAuditCallback`, run as a
script: Lightning's launcher starts the other rank by running this file again. After the
fit, rank zero also runs the single-process `run_audit` of the same candidate with the
same seed and recipe into ``OUT/single``, for `test_ddp_callback.py` to compare.

    python tests/integration/ddp_fit.py OUT --models 6 --group-size 2 [--fail-rank 1]
    DDP_FIT_NAMESPACE=lightning.pytorch python tests/integration/ddp_fit.py OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import importlib  # noqa: E402

# The Lightning namespace (the launcher's other rank inherits the environment).
NAMESPACE = os.environ.get("DDP_FIT_NAMESPACE", "pytorch_lightning")
pl: Any = importlib.import_module(NAMESPACE)
PrivacyAuditCallback = importlib.import_module(
    {"pytorch_lightning": "lightning_callbacks.pytorch_lightning",
     "lightning.pytorch": "lightning_callbacks.lightning"}[NAMESPACE]
).PrivacyAuditCallback  # fmt: skip
from privacy_gate.config import parse_config  # noqa: E402
from privacy_gate.training import run_audit  # noqa: E402
from privacy_gate.training.backends import BatchedBackend  # noqa: E402
from privacy_gate.training.data import AuditData  # noqa: E402
from privacy_gate.training.recipe import Optimizer, Recipe  # noqa: E402

N, FEATURES, EPOCHS, BATCH, WORLD = 120, 6, 2, 16, 2
PATIENTS = [f"p{i // 2}" for i in range(N)]
POLICY = {"gate": {"max_patient_auc": 1.0}}
STRICT = {"gate": {"max_patient_auc": 0.5000001, "max_patients_at_risk": 0}}


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, N)
    inputs = rng.normal(size=(N, FEATURES)) + labels[:, None] * 0.8
    return torch.tensor(inputs, dtype=torch.float32), torch.tensor(labels)


class Net(pl.LightningModule):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


class Data(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        inputs, labels = tensors()
        self.train_set = TensorDataset(inputs[: N // 2], labels[: N // 2])
        self.test_set = TensorDataset(inputs[N // 2 :], labels[N // 2 :])

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=BATCH, shuffle=True)

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.test_set, batch_size=BATCH)


class FailsOnRank:
    """The model factory, failing on one rank once armed (after the candidate's fit:
    that rank's share of the reference models cannot train)."""

    def __init__(self, rank: int | None) -> None:
        self.rank, self.armed = rank, False

    def __call__(self) -> nn.Module:
        here = int(os.environ.get("LOCAL_RANK", "0"))
        if self.armed and self.rank is not None and here == self.rank:
            raise RuntimeError(f"simulated failure on rank {self.rank}")
        return Net()


class Arm(pl.Callback):
    """Arms the factory when the fit ends, before the audit (the next callback)."""

    def __init__(self, factory: FailsOnRank) -> None:
        self.factory = factory

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.factory.armed = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--fail-rank", type=int, default=None)
    parser.add_argument("--strict", action="store_true", help="a policy the model fails; raise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    factory = FailsOnRank(args.fail_rank)
    callback = PrivacyAuditCallback(
        config=parse_config(STRICT if args.strict else POLICY),
        reference_models=args.models,
        backend="batched",
        backend_options={"group_size": args.group_size},
        patient_ids=PATIENTS,
        output_dir=args.out / "audit",
        model_factory=factory,
        plots=False,
        on_fail="raise" if args.strict else "warn",
        log_model=False,
    )
    trainer = pl.Trainer(
        strategy="ddp",
        devices=WORLD,
        accelerator="cpu",
        max_epochs=EPOCHS,
        callbacks=[Arm(factory), callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    torch.manual_seed(0)
    model = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=Data())
    if not trainer.is_global_zero:
        return
    (args.out / "outcome.json").write_text(json.dumps({"status": callback.status_}))
    inputs, labels = tensors()
    half = N // 2
    data = AuditData(inputs[:half], labels[:half], inputs[half:], labels[half:],
                     patient_ids=PATIENTS)  # fmt: skip
    # The candidate's recipe, written out independently of the callback's extraction:
    # each step averages the gradients of WORLD batches of BATCH records.
    recipe = Recipe(epochs=EPOCHS, batch_size=BATCH * WORLD, optimizer=Optimizer.ADAM,
                    learning_rate=0.01)  # fmt: skip
    run_audit(
        FailsOnRank(None),
        data,
        recipe=recipe,
        config=parse_config(POLICY),
        reference_models=args.models,
        backend=BatchedBackend(group_size=args.group_size),
        seed=0,
        candidate=model,
        out_dir=args.out / "single",
        plots=False,
        device="cpu",
    )


if __name__ == "__main__":
    main()
