"""Benchmark: K LoRA fine-tunes of one pretrained base as one batched ensemble (the base
held once, the adapters stacked) against K separate PEFT fine-tunes, one after another
(the sequential backend's `train_one`), and the ensemble's peak memory against K.

The model is the fine-tune example's (examples/finetune/model.py: `lora_model`, the
pretrained ECG encoder with rank-4 LoRA adapters on its three convolutions and a new
head), on its pool's 1,500 training beats; each model trains on half of them. The
sequential baseline is timed on a few models just before and just after each batched
run, and the faster of the two, multiplied by K (it is linear in K), is compared: the
speed of a shared machine drifts, and this never flatters the speed-up. Each K is
measured in several rounds; the range and median of its speed-ups are printed.
Peak memory is the resident set's high-water mark of a fresh process per K, minus the
process's before training.

    .venv/bin/python benchmarks/bench_lora.py               # K = 16 and 64, 10 epochs, 2 rounds
    .venv/bin/python benchmarks/bench_lora.py --models 16 --epochs 1 --rounds 1
    .venv/bin/python benchmarks/bench_lora.py --device cuda --rounds 1     # on a GPU
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

from device_clock import synchronise  # noqa: E402  (benchmarks/, the script's own folder)

from examples.finetune.data import load_finetune_pool  # noqa: E402
from examples.finetune.model import lora_model  # noqa: E402
from privacy_gate.training.batched import train_batched  # noqa: E402
from privacy_gate.training.recipe import Recipe  # noqa: E402
from privacy_gate.training.sequential import train_one  # noqa: E402


def _problem(models: int) -> tuple[torch.Tensor, torch.Tensor, list[Any], list[int]]:
    data = load_finetune_pool()
    inputs, labels = data.train_inputs, data.train_labels
    rng = np.random.default_rng(0)
    half = len(inputs) // 2
    subsets = [np.sort(rng.choice(len(inputs), half, replace=False)) for _ in range(models)]
    return inputs, labels, subsets, list(range(models))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(models: int, epochs: int, device: torch.device) -> dict[str, Any]:
    """One batched run (in this process): seconds, peak RSS growth, the engine's note."""
    inputs, labels, subsets, seeds = _problem(models)
    recipe = Recipe(epochs=epochs, batch_size=32, learning_rate=3e-3)
    lora_model()  # import PEFT (seconds) before the clock starts, as the baseline does
    before = _rss_mib()
    notes: dict[str, Any] = {}
    started = time.perf_counter()
    train_batched(
        lora_model, inputs, labels, subsets, recipe, seeds=seeds, notes=notes, device=device
    )
    synchronise(device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": _rss_mib() - before, "note": notes}


def sequential(models: int, epochs: int, device: torch.device) -> float:
    """Seconds per separate PEFT fine-tune (the median of ``models`` runs)."""
    inputs, labels, subsets, seeds = _problem(models)
    recipe = Recipe(epochs=epochs, batch_size=32, learning_rate=3e-3)
    runs = []
    for subset, seed in zip(subsets, seeds, strict=True):
        started = time.perf_counter()
        train_one(lora_model, inputs, labels, subset, recipe, seed=seed, device=device)
        synchronise(device)
        runs.append(time.perf_counter() - started)
    return float(np.median(runs))


def _batched_child(k: int, epochs: int, device: torch.device) -> dict[str, Any]:
    child = subprocess.run(
        [sys.executable, __file__, "--one", str(k), "--epochs", str(epochs),
         "--device", str(device)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sequential-models", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the models train (cpu, cuda)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.epochs, device)))
        return
    base = lora_model()
    frozen = sum(p.numel() for p in base.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{torch.get_num_threads()} CPU threads"
    )  # fmt: skip
    print(f"{args.epochs} epochs, 750 beats per model, {where}; "
          f"the base: {frozen:,} frozen values, {trainable:,} trainable per model; "
          f"{args.rounds} rounds")  # fmt: skip
    print(f"{'round':>5}{'K':>4}{'seq s/model':>13}{'sequential s':>14}{'batched s':>11}"
          f"{'speed-up':>10}{'peak MiB':>10}")  # fmt: skip
    ratios: dict[int, list[float]] = {k: [] for k in args.models}
    note = ""
    for round_ in range(1, args.rounds + 1):
        for k in args.models:
            before = sequential(args.sequential_models, args.epochs, device)
            result = _batched_child(k, args.epochs, device)
            after = sequential(args.sequential_models, args.epochs, device)
            per_model = min(before, after)  # the faster neighbour: never flattering
            total = per_model * k
            ratios[k].append(total / result["seconds"])
            note = result["note"].get("shared_frozen_weights", "no frozen weights shared")
            print(f"{round_:>5}{k:>4}{per_model:>13.2f}{total:>14.1f}{result['seconds']:>11.1f}"
                  f"{ratios[k][-1]:>9.1f}x{result['peak_mib']:>10.0f}")  # fmt: skip
    for k, values in ratios.items():
        print(f"K = {k}: speed-up {min(values):.1f}x to {max(values):.1f}x "
              f"(median {float(np.median(values)):.1f}x)")  # fmt: skip
    print(f"last run's note: {note}")


if __name__ == "__main__":
    main()
