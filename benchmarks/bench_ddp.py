"""Benchmark: the callback's audit under DDP (the reference models split across ranks)
against the same audit in one process, with the same total CPU threads.

Runs itself as a Lightning script (Lightning's DDP launcher starts the other ranks by
running this file again). The candidate (the EHR example's MLP shape: 78 features ->
128 -> 64 -> 2, synthetic data of SUPPORT2's size) fits for 5 epochs, global batch 128;
the audit then trains K reference models with that recipe, batched in groups of 8. The
time measured is the audit's (from the end of the candidate's fit to rank zero's verdict).

    .venv/bin/python benchmarks/bench_ddp.py                  # 1 process x 2 threads, then 2 x 1
    .venv/bin/python benchmarks/bench_ddp.py --devices 2 --accelerator gpu --models 64
        # on a GPU node: one rank per GPU (benchmarks/gpu_check.sh)

On 2 CPU cores expect little: the single process already uses both cores for its
batched ensembles. The figure that matters is N GPUs, where each rank trains K/N models
on its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

N_RECORDS, N_FEATURES, EPOCHS = 9105, 78, 5


def _tensors() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(N_RECORDS, N_FEATURES, generator=generator)
    weights = torch.randn(N_FEATURES, generator=generator)
    labels = (inputs @ weights + torch.randn(N_RECORDS, generator=generator) > 0).long()
    return inputs, labels


def run_one(args: argparse.Namespace) -> None:
    """One fit with the callback (this process is one rank when ``--devices`` > 1)."""
    import pytorch_lightning as pl

    from lightning_callbacks.pytorch_lightning import PrivacyAuditCallback
    from privacy_gate.config import parse_config

    class EHRNet(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(N_FEATURES, 128), nn.ReLU(),
                                     nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 2))  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    class Clock(pl.Callback):  # type: ignore[misc]
        """Starts the clock when the fit ends (before the audit, the next callback)."""

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.started = time.perf_counter()

    torch.set_num_threads(args.threads)
    inputs, labels = _tensors()
    half = N_RECORDS // 2
    train = DataLoader(TensorDataset(inputs[:half], labels[:half]),
                       batch_size=128 // args.devices, shuffle=True)  # fmt: skip
    holdout = TensorDataset(inputs[half:], labels[half:])
    clock = Clock()
    audit = PrivacyAuditCallback(
        config=parse_config({"gate": {"max_patient_auc": 1.0}}),
        holdout=holdout,
        reference_models=args.models,
        backend="batched",
        backend_options={"group_size": 8},
        output_dir=args.out / "audit",
        plots=False,
        on_fail="warn",
        log_model=False,
    )
    trainer = pl.Trainer(
        strategy="ddp" if args.devices > 1 else "auto",
        devices=args.devices,
        accelerator=args.accelerator,
        max_epochs=EPOCHS,
        callbacks=[clock, audit],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
    )
    torch.manual_seed(0)
    trainer.fit(EHRNet(), train_dataloaders=train)
    if trainer.is_global_zero:
        seconds = time.perf_counter() - clock.started
        (args.out / "timing.json").write_text(json.dumps({"audit_seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.devices is not None:  # one configuration (and, under DDP, one of its ranks)
        args.threads = args.threads or 1
        run_one(args)
        return
    cores = os.cpu_count() or 2
    rows = []
    for devices, threads in ((1, cores), (2, max(1, cores // 2))):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, __file__, "--devices", str(devices), "--threads",
                       str(threads), "--models", str(args.models), "--out", out]  # fmt: skip
            subprocess.run(command, check=True, capture_output=True, text=True)
            seconds = json.loads((Path(out) / "timing.json").read_text())["audit_seconds"]
        rows.append((f"{devices} process(es) x {threads} thread(s)", seconds))
    print(f"K = {args.models} reference models, {EPOCHS} epochs, {cores} cores; audit seconds")
    for name, seconds in rows:
        print(f"{name:<32}{seconds:>9.2f} s{seconds / rows[0][1]:>8.2f}x")


if __name__ == "__main__":
    main()
