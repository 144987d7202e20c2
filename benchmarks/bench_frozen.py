"""Benchmark: a fine-tune with a frozen trunk, its K reference models trained with the
trunk computed once (the heads on cached features, `frozen_prefix`) against K whole
networks batched as before (issue 28).

The model: a frozen pretrained MLP trunk (78 -> 512 -> 512 -> 256, Tanh) and a trainable
head (256 -> 2), on synthetic data of the EHR pool's shape (9,105 records); each model
trains on half the pool for 10 epochs, batch 128, Adam lr 1e-3.

    .venv/bin/python benchmarks/bench_frozen.py                 # K = 64
    .venv/bin/python benchmarks/bench_frozen.py --models 16 --repeat 3
    .venv/bin/python benchmarks/bench_frozen.py --example --device cuda   # on a GPU

``--example`` takes the fine-tune example's model and data instead
(examples/finetune: the pretrained ECG conv encoder frozen, a new two-layer head; the
pool's 1,500 training beats, each model on half, batch 32, Adam lr 3e-3).
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

from device_clock import synchronise  # noqa: E402  (benchmarks/, the script's own folder)

from privacy_gate.training.batched import train_batched  # noqa: E402
from privacy_gate.training.batched.frozen_prefix import (  # noqa: E402
    frozen_features,
    split_frozen_prefix,
)
from privacy_gate.training.recipe import Recipe  # noqa: E402

N_RECORDS, N_FEATURES = 9105, 78


def trunk() -> nn.Module:
    generator = torch.Generator().manual_seed(7)  # "pretrained": the same in every model
    net = nn.Sequential(nn.Linear(N_FEATURES, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(),
                        nn.Linear(512, 256), nn.Tanh())  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return net.requires_grad_(False)


class FineTune(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.head = trunk(), nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--example", action="store_true", help="the fine-tune example's model")
    parser.add_argument("--device", default="cpu", help="where the models train (cpu, cuda)")
    args = parser.parse_args()
    device = torch.device(args.device)
    factory: Callable[[], nn.Module] = FineTune
    if args.example:
        from examples.finetune.data import load_finetune_pool
        from examples.finetune.model import frozen_trunk_model

        pool = load_finetune_pool()
        inputs, labels, factory = pool.train_inputs, pool.train_labels, frozen_trunk_model
        recipe = Recipe(epochs=args.epochs, batch_size=32, learning_rate=3e-3)
    else:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(N_RECORDS, N_FEATURES, generator=generator)
        labels = (inputs[:, :5].sum(1) > 0).long()
        recipe = Recipe(epochs=args.epochs, batch_size=128, learning_rate=1e-3)
    n_records = len(inputs)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(n_records, n_records // 2, replace=False))
               for _ in range(args.models)]  # fmt: skip
    seeds = list(range(args.models))

    def timed(cached: bool) -> float:
        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            train_batched(factory, inputs, labels, subsets, recipe, seeds=seeds,
                          frozen_trunk=cached, device=device)  # fmt: skip
            synchronise(device)
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    split = split_frozen_prefix(factory().to(device), inputs[:8].to(device))
    assert not isinstance(split, str), split
    on_device = inputs.to(device)
    synchronise(device)
    started = time.perf_counter()
    frozen_features(split, on_device)
    synchronise(device)
    trunk_s = time.perf_counter() - started
    cached_s, whole_s = timed(True), timed(False)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{torch.get_num_threads()} CPU threads"
    )  # fmt: skip
    print(f"K = {args.models}, {args.epochs} epochs, {n_records:,} records, {where}, "
          f"median of {args.repeat}")  # fmt: skip
    print(f"{'path':<44}{'seconds':>9}{'speed-up':>10}")
    print(f"{'whole networks, batched (before)':<44}{whole_s:>9.2f}{1.0:>9.1f}x")
    print(f"{'frozen trunk computed once, heads batched':<44}{cached_s:>9.2f}"
          f"{whole_s / cached_s:>9.1f}x")  # fmt: skip
    print(f"the trunk's one pass over the pool: {trunk_s:.2f} s "
          f"({trunk_s / cached_s:.0%} of the cached run)")  # fmt: skip


if __name__ == "__main__":
    main()
