"""Benchmark of reference-model training: K models one after another vs one batched ensemble.

The audit trains K reference models with the candidate's recipe. This script times

1. ``lightning``: one ``pytorch_lightning.Trainer.fit`` per model (no logger, no
   checkpoints, no progress bar), as Lightning-based audit tools do;
2. ``dataloader``: the textbook PyTorch loop per model (``DataLoader`` with
   ``shuffle=True`` over the model's subset, Adam, eval after training);
3. ``sequential``: privacy-gate's own loop, ``train_one`` per model (index slicing, no
   DataLoader): the fastest one-at-a-time baseline;
4. ``batched``: ``train_batched``, all K models as one computation (this MLP takes its
   fast path: stacked weights, ``baddbmm`` forward, hand-written backward);
5. ``batched-vmap``: ``train_batched(..., fast_path=False)``, the general path every
   other architecture takes (``torch.func.vmap`` + autograd);

on the EHR example's shape: the SUPPORT2 pool (9,105 records, 78 features, via
``examples.ehr``) when SurvSet is installed, else synthetic data of that shape; the
example's MLP (``-> 128 -> 64 -> 2``, ReLU, Dropout 0.1); each model trains on half the
pool (a plan drawn by patient); 20 epochs, batch 128, Adam lr 1e-3.

Each mode runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own; the
table shows the peak and the growth during training over the process's state after the
data were loaded. Data loading and imports are excluded from the wall time (including
Lightning's import and the ``torch._dynamo`` import of a process's first ``torch.optim``
optimizer, about 2 s and 1 s, one-time costs of the process, not of training).

    .venv/bin/python benchmarks/bench_training.py                 # K=16
    .venv/bin/python benchmarks/bench_training.py --models 64 --threads 2
    .venv/bin/python benchmarks/bench_training.py --data synthetic --epochs 5
    .venv/bin/python benchmarks/bench_training.py --repeat 3   # median of 3 (noisy machines)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ehr_pool import load_ehr_pool  # noqa: E402  (benchmarks/, the script's own folder)

from privacy_gate.plan import draw_plan  # noqa: E402
from privacy_gate.training.batched import train_batched  # noqa: E402
from privacy_gate.training.recipe import Optimizer, Recipe  # noqa: E402
from privacy_gate.training.sequential import train_one  # noqa: E402

MODES = ("lightning", "dataloader", "sequential", "batched", "batched-vmap")


def load_pool(kind: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Inputs and labels of the pool: the SUPPORT2 example's, or synthetic of its shape."""
    data, source = load_ehr_pool(kind)
    inputs, labels = data.pool()
    return inputs, labels, source


def make_factory(n_features: int, dropout: float) -> Any:
    from examples.ehr.model import make_model

    return lambda: make_model(n_features=n_features, hidden=(128, 64), dropout=dropout)


def subset_loader(
    inputs: torch.Tensor, labels: torch.Tensor, subset: np.ndarray, batch_size: int
) -> Any:
    """A shuffled DataLoader over the model's subset, as the textbook loops use."""
    from torch.utils.data import DataLoader, TensorDataset

    index = torch.from_numpy(subset)
    return DataLoader(
        TensorDataset(inputs[index], labels[index]), batch_size=batch_size, shuffle=True
    )


def dataloader_fit(
    factory: Any,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subset: np.ndarray,
    recipe: Recipe,
    seed: int,
) -> torch.nn.Module:
    """The textbook loop: DataLoader over the subset, shuffled, Adam."""
    torch.manual_seed(seed)
    model = factory()
    loader = subset_loader(inputs, labels, subset, recipe.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    model.train()
    for _ in range(recipe.epochs):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model


def lightning_fit(
    factory: Any,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subset: np.ndarray,
    recipe: Recipe,
    seed: int,
) -> torch.nn.Module:
    """One Trainer.fit per model, as Lightning-based tools train reference models."""
    import logging

    import pytorch_lightning as pl

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = factory()

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=recipe.learning_rate)

    torch.manual_seed(seed)
    module = Module()
    loader = subset_loader(inputs, labels, subset, recipe.batch_size)
    trainer = pl.Trainer(max_epochs=recipe.epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", devices=1)  # fmt: skip
    trainer.fit(module, loader)
    return module.net


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    """Train in this process with one mode; report wall time and RSS."""
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs, labels, source = load_pool(args.data)
    plan = draw_plan(np.arange(len(inputs)), args.models, seed=0)
    subsets = [np.flatnonzero(row) for row in plan]
    seeds = list(range(args.models))
    recipe = Recipe(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=Optimizer.ADAM,
        learning_rate=args.lr,
    )
    factory = make_factory(inputs.shape[1], args.dropout)
    # Imports stay out of the wall time: Lightning's own (about 2 s) and the torch._dynamo
    # import that a process's first torch.optim optimizer triggers (about 1 s).
    if args.child == "lightning":
        import pytorch_lightning  # noqa: F401
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    rss_before = peak_rss_bytes()
    start = time.perf_counter()
    if args.child == "lightning":
        models = [lightning_fit(factory, inputs, labels, subsets[k], recipe, seeds[k])
                  for k in range(args.models)]  # fmt: skip
    elif args.child == "dataloader":
        models = [dataloader_fit(factory, inputs, labels, subsets[k], recipe, seeds[k])
                  for k in range(args.models)]  # fmt: skip
    elif args.child == "sequential":
        models = [
            train_one(factory, inputs, labels, subsets[k], recipe, seed=seeds[k])
            for k in range(args.models)
        ]
    else:
        models = train_batched(factory, inputs, labels, subsets, recipe, seeds=seeds,
                               fast_path=args.child == "batched")  # fmt: skip
    wall = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float(
            np.mean([(m.eval()(inputs).argmax(1) == labels).float().mean() for m in models])
        )
    return {
        "mode": args.child,
        "wall_s": wall,
        "rss_before": rss_before,
        "rss_peak": peak_rss_bytes(),
        "threads": torch.get_num_threads(),
        "source": source,
        "records": len(inputs),
        "features": int(inputs.shape[1]),
        "mean_subset": float(np.mean([len(s) for s in subsets])),
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16, help="K reference models")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--data", choices=("auto", "ehr", "synthetic"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode (median shown)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return
    results: dict[str, dict[str, Any]] = {}
    walls: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for _ in range(args.repeat):  # interleaved, so a busy spell hits every mode alike
        for mode in args.modes:
            command = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            walls[mode].append(results[mode]["wall_s"])
    for mode, times in walls.items():
        results[mode]["wall_s"] = float(np.median(times))
    first = next(iter(results.values()))
    print(
        f"data: {first['source']}, {first['records']} records x {first['features']} features; "
        f"K={args.models}, ~{first['mean_subset']:.0f} records per model; {args.epochs} epochs, "
        f"batch {args.batch_size}, Adam lr {args.lr}, dropout {args.dropout}; "
        f"torch {torch.__version__}, {first['threads']} thread(s); wall time: median of "
        f"{args.repeat} interleaved run(s)"
    )
    mib = 1024**2
    print(
        f"{'mode':<13}{'wall s':>9}{'s/model':>10}{'peak RSS MiB':>14}{'RSS growth MiB':>16}"
        f"{'pool acc':>10}"
    )
    for mode, r in results.items():
        print(
            f"{mode:<13}{r['wall_s']:>9.2f}{r['wall_s'] / args.models:>10.3f}"
            f"{r['rss_peak'] / mib:>14.0f}{(r['rss_peak'] - r['rss_before']) / mib:>16.1f}"
            f"{r['accuracy']:>10.3f}"
        )
    if "batched" in results:
        for mode in (m for m in results if m != "batched"):
            ratio = results[mode]["wall_s"] / results["batched"]["wall_s"]
            print(f"speed-up of batched over {mode}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
