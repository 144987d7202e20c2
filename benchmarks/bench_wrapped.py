"""Benchmark: a LightningModule wrapping an MLP in ``self.net`` against the same network as
a plain ``nn.Sequential``, both through `train_batched` (issue 27).

The MLP fast path recognises the network a module's forward computes (traced with
``torch.fx``, `privacy_gate.training.batched.chain`), so the wrapped module should train
as fast as the plain one, to the same weights. The general vmap path (what the wrapper
took before) is timed beside them.

Data: SurvSet's ``rhc`` cohort (5,735 patients; categorical columns one-hot, numeric ones
median-filled and standardised; label ``event``), else synthetic data of that shape. An
MLP ``-> 256 -> ReLU -> 256 -> ReLU -> 2``; K = 16 models, each on a random half; 10 epochs,
batch 128, Adam lr 1e-3.

    .venv/bin/python benchmarks/bench_wrapped.py
    .venv/bin/python benchmarks/bench_wrapped.py --models 16 --epochs 10 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from privacy_gate.training.batched import mlp_fast_path_problem, train_batched  # noqa: E402
from privacy_gate.training.recipe import Loss, Recipe  # noqa: E402


def load_rhc() -> tuple[torch.Tensor, torch.Tensor, str]:
    """The rhc cohort as features and labels, or synthetic data of its shape."""
    try:
        import pandas as pd
        from SurvSet.data import SurvLoader

        frame = SurvLoader().load_dataset("rhc")["df"]
    except ImportError:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(5735, 122, generator=generator)
        labels = (inputs[:, :8].sum(1) + torch.randn(5735, generator=generator) > 0).long()
        return inputs, labels, "synthetic (5,735 x 122)"
    labels = torch.tensor(frame["event"].to_numpy(), dtype=torch.long)
    features = frame.drop(columns=["pid", "event", "time"])
    numeric = features.select_dtypes("number")
    numeric = (numeric - numeric.median()).fillna(0.0)
    numeric = numeric / numeric.std().replace(0.0, 1.0)
    categorical = pd.get_dummies(features.drop(columns=numeric.columns).astype(str))
    table = np.concatenate([numeric.to_numpy(), categorical.to_numpy(dtype=float)], axis=1)
    inputs = torch.tensor(table, dtype=torch.float32)
    return inputs, labels, f"SurvSet rhc ({inputs.shape[0]:,} x {inputs.shape[1]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import pytorch_lightning as pl

    inputs, labels, source = load_rhc()
    features, hidden = inputs.shape[1], args.hidden

    def plain() -> nn.Module:
        return nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 2),
        )  # fmt: skip

    class Wrapped(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = plain()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(inputs), len(inputs) // 2, replace=False))
               for _ in range(args.models)]  # fmt: skip
    seeds = list(range(args.models))
    recipe = Recipe(epochs=args.epochs, batch_size=128, learning_rate=1e-3)
    assert mlp_fast_path_problem(Wrapped(), inputs, labels, Loss.CROSS_ENTROPY) is None

    def timed(factory: Callable[[], nn.Module], fast: bool) -> tuple[float, list[nn.Module]]:
        times, models = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            models = train_batched(factory, inputs, labels, subsets, recipe, seeds=seeds,
                                   fast_path=fast)  # fmt: skip
            times.append(time.perf_counter() - started)
        return statistics.median(times), models

    plain_s, plain_models = timed(plain, True)
    wrapped_s, wrapped_models = timed(Wrapped, True)
    vmap_s, _ = timed(Wrapped, False)
    with torch.no_grad():
        gap = max(
            float((a(inputs) - b(inputs)).abs().max())
            for a, b in zip(plain_models, wrapped_models, strict=True)
        )
    print(f"data: {source}; K = {args.models}, {args.epochs} epochs, hidden {hidden}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")  # fmt: skip
    print(f"{'path':<36}{'seconds':>10}{'vs plain':>10}")
    for name, seconds in (
        ("plain nn.Sequential (MLP fast path)", plain_s),
        ("LightningModule self.net (fast path)", wrapped_s),
        ("LightningModule, general vmap path", vmap_s),
    ):
        print(f"{name:<36}{seconds:>10.2f}{seconds / plain_s:>9.2f}x")
    print(f"largest logit difference, wrapped vs plain: {gap:.3g}")


if __name__ == "__main__":
    main()
