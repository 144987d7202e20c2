"""Benchmark of DP-SGD reference-model training: the Opacus loop (`train_one_dp`, one
model at a time) against the batched engine (MLP fast path with ghost clipping, and the
general vmap path), in one run, at K = 16 and K = 64.

The EHR example's MLP and pool (SUPPORT2 via ``examples.ehr``: 9,105 records, 78
features; each model on half of the pool), batch 128, Adam lr 1e-3, DP-SGD with noise
multiplier 1.0 and clipping 1.0, ``--epochs`` epochs (1 by default: per-epoch cost is
constant). The batched engine trains groups of 16 models, as the batched backend does.
The Opacus loop is timed on ``--sequential`` models and scaled to K (it trains
one model at a time, so its time is linear in K). Every path trains with the same
Poisson batches and noise streams (the batched models equal Opacus' to float rounding,
tests/integration/test_batched_dp.py).

    .venv/bin/python benchmarks/bench_dp.py
    .venv/bin/python benchmarks/bench_dp.py --models 16 64 --sequential 4 --epochs 2
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.ehr.data import load_support2
from examples.ehr.model import make_model
from privacy_gate.training.batched import train_batched
from privacy_gate.training.recipe import DPSettings, Recipe
from privacy_gate.training.reference import DEFAULT_GROUP_SIZE as GROUP
from privacy_gate.training.sequential import train_one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--sequential", type=int, default=4, help="Opacus models timed")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--vmap-models", type=int, default=16,
                        help="the vmap path is timed at this K only (it is slow)")  # fmt: skip
    parser.add_argument("--no-ecg", action="store_true", help="skip the ECG CNN")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message=".*replaced layers Opacus cannot train")
    data = load_support2(seed=0)
    inputs, labels = data.pool()
    recipe = Recipe(epochs=args.epochs, batch_size=128, learning_rate=1e-3,
                    dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))  # fmt: skip
    largest = max(args.models)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(inputs), len(inputs) // 2, replace=False))
               for _ in range(largest)]  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; EHR MLP, "
          f"{len(inputs) // 2} records per model, {args.epochs} epoch(s), DP-SGD")  # fmt: skip
    train_batched(make_model, inputs, labels, subsets[:2], recipe, seeds=[0, 1])  # warm-up
    started = time.perf_counter()
    for k in range(args.sequential):
        train_one(make_model, inputs, labels, subsets[k], recipe, seed=k)
    per_model = (time.perf_counter() - started) / args.sequential
    print(f"{'K':>4}{'Opacus loop (scaled)':>24}{'batched MLP path':>20}{'speed-up':>10}"
          f"{'batched vmap path':>20}{'speed-up':>10}")  # fmt: skip
    for k in args.models:
        started = time.perf_counter()
        for start in range(0, k, GROUP):  # groups of 16, as the batched backend trains them
            group = list(range(start, min(start + GROUP, k)))
            train_batched(make_model, inputs, labels, [subsets[j] for j in group], recipe,
                          seeds=group)  # fmt: skip
        fast = time.perf_counter() - started
        vmap_cell = ""
        if k == args.vmap_models:
            started = time.perf_counter()
            train_batched(make_model, inputs, labels, subsets[:k], recipe,
                          seeds=list(range(k)), fast_path=False)  # fmt: skip
            vmapped = time.perf_counter() - started
            vmap_cell = f"{vmapped:>19.1f}s{per_model * k / vmapped:>9.1f}x"
        print(f"{k:>4}{per_model * k:>23.1f}s{fast:>19.1f}s{per_model * k / fast:>9.1f}x"
              f"{vmap_cell}")  # fmt: skip
    print(f"(Opacus loop: {args.sequential} models timed, {per_model:.2f} s each)")
    if not args.no_ecg:
        _ecg(args)


def _ecg(args: argparse.Namespace) -> None:
    """The ECG example's 1D ResNet (BatchNorm, which Opacus' fixer makes GroupNorm in
    both loops) on half of ECG5000 per model: the conv fast path's per-row gradients."""
    from examples.ecg.data import load_ecg5000
    from examples.ecg.model import make_model as ecg_model

    data = load_ecg5000()
    inputs, labels = data.pool()
    recipe = Recipe(epochs=args.epochs, batch_size=64, learning_rate=1e-3,
                    dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))  # fmt: skip
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(inputs), len(inputs) // 2, replace=False))
               for _ in range(GROUP)]  # fmt: skip
    started = time.perf_counter()
    for k in range(2):
        train_one(ecg_model, inputs, labels, subsets[k], recipe, seed=k)
    opacus = (time.perf_counter() - started) / 2 * GROUP
    started = time.perf_counter()
    train_batched(ecg_model, inputs, labels, subsets, recipe, seeds=list(range(GROUP)))
    conv = time.perf_counter() - started
    print(f"\nECG 1D ResNet, K={GROUP}, {len(inputs) // 2} records per model: Opacus loop "
          f"{opacus:.1f} s (scaled from 2 models), batched conv fast path {conv:.1f} s, "
          f"{opacus / conv:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
