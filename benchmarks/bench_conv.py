"""Benchmark of reference-model training for the examples' CNNs: K models one after
another (``train_one``) vs the batched conv fast path vs the general vmap path, in one
run, with the fraction of the machine's matrix-product peak that a step reaches.

Models and data are the examples': the ECG 1D ResNet (BatchNorm, width 16) on ECG5000
(2,500 of 5,000 beats per model) and the imaging 2D ResNet (BatchNorm, width 8) on the
IHC patches (half of 961 per model); Adam, the examples' batch sizes. ``--epochs``
epochs per model (1 by default: the ratio does not depend on it).

Peak: the GFLOP/s of a large float32 ``torch.mm`` on the same device and threads,
measured in the same run. A step's FLOPs: 3x the forward multiply-adds of the conv and
linear layers (forward, input gradient, weight gradient), counted with forward hooks.

    .venv/bin/python benchmarks/bench_conv.py                    # CPU, K=16
    .venv/bin/python benchmarks/bench_conv.py --device cuda --models 64 --sequential 8 \
        --only images64                                           # the GPU goal
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from device_clock import synchronise  # benchmarks/, the script's own folder

from examples.ecg.data import load_ecg5000
from examples.ecg.model import make_model as ecg_model
from examples.imaging.data import load_ihc_patches
from examples.imaging.model import make_model as image_model
from privacy_gate.training.batched import train_batched
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.sequential import train_one


def matmul_peak(device: torch.device, size: int = 2048, repeat: int = 5) -> float:
    """GFLOP/s of a float32 matrix product (the machine's practical peak): the best of
    three timings of ``repeat`` products, as other work on the machine only slows it."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        synchronise(device)
        started = time.perf_counter()
        for _ in range(repeat):
            torch.mm(a, b)
        synchronise(device)
        best = max(best, repeat * 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def step_flops(factory: Callable[[], nn.Module], x: torch.Tensor) -> float:
    """FLOPs of one training step of one model on the batch ``x`` (3x forward MACs x 2)."""
    model = factory()
    macs = [0]

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            kernel = module.weight[0].numel()  # in/groups * kernel
            macs[0] += out.numel() * kernel
        elif isinstance(module, nn.Linear):
            macs[0] += out.numel() * module.in_features

    for module in model.modules():
        module.register_forward_hook(count)
    with torch.no_grad():
        model(x)
    return 3 * 2 * macs[0]


def _time(function: Callable[[], object], device: torch.device) -> float:
    synchronise(device)
    started = time.perf_counter()
    function()
    synchronise(device)
    return time.perf_counter() - started


def bench(name: str, factory: Callable[[], nn.Module], data: object, batch: int,
          args: argparse.Namespace) -> None:  # fmt: skip
    device = torch.device(args.device)
    inputs, labels = data.pool()  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(inputs), len(inputs) // 2, replace=False))
               for _ in range(args.models)]  # fmt: skip
    seeds = list(range(args.models))
    recipe = Recipe(epochs=args.epochs, batch_size=batch, learning_rate=1e-3)
    # warm-up (kernels, allocator), not timed
    train_batched(factory, inputs, labels, subsets[:2], Recipe(epochs=1, batch_size=batch),
                  seeds=seeds[:2], device=device)  # fmt: skip
    n_seq = min(args.sequential, args.models)
    sequential = _time(lambda: [train_one(factory, inputs, labels, subsets[k], recipe,
                                          seed=k, device=device) for k in range(n_seq)],
                       device) / n_seq * args.models  # fmt: skip
    conv = _time(lambda: train_batched(factory, inputs, labels, subsets, recipe, seeds=seeds,
                                       device=device), device)  # fmt: skip
    vmap = _time(lambda: train_batched(factory, inputs, labels, subsets, recipe, seeds=seeds,
                                       fast_path=False, device=device), device)  # fmt: skip
    steps = args.epochs * -(-(len(inputs) // 2) // batch)
    flops = step_flops(factory, inputs[:batch].to(device))
    peak = matmul_peak(device)
    print(f"\n{name}: K={args.models}, {steps} steps per model, batch {batch}, "
          f"{flops / 1e6:.0f} MFLOP per model step, matmul peak {peak:.0f} GFLOP/s")  # fmt: skip
    print(f"{'path':<22}{'seconds (K models)':>20}{'vs sequential':>16}{'of peak':>10}")
    for label, seconds in (("sequential train_one", sequential), ("batched conv path", conv),
                           ("batched vmap path", vmap)):  # fmt: skip
        fraction = args.models * steps * flops / seconds / 1e9 / peak
        print(f"{label:<22}{seconds:>20.1f}{sequential / seconds:>15.2f}x{fraction:>10.1%}")
    if n_seq < args.models:
        print(f"(sequential: {n_seq} models timed, scaled to K={args.models})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=16, help="models timed one by one")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=["ecg", "imaging", "images64"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.only in (None, "ecg"):
        bench("ECG 1D ResNet (ECG5000)", ecg_model, load_ecg5000(), 64, args)
    if args.only in (None, "imaging"):
        bench("Imaging 2D ResNet (IHC patches)", image_model, load_ihc_patches(), 32, args)
    if args.only == "images64":  # the GPU goal: a small ResNet on 64x64 images
        bench("2D ResNet width 16 on 64x64 images (synthetic)",
              lambda: image_model(width=16), _images64(), 64, args)  # fmt: skip


def _images64(n: int = 4096) -> object:
    """Generated 64x64 RGB images of two classes (bright vs dark centre), as AuditData."""
    from privacy_gate.training.data import AuditData

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.rand(n, 3, 64, 64, generator=generator)
    images[:, :, 24:40, 24:40] += labels.view(-1, 1, 1, 1) * 0.5
    half = n // 2
    return AuditData(images[:half], labels[:half], images[half:], labels[half:])


if __name__ == "__main__":
    main()
