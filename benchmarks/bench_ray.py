"""Benchmark of the ray backend: scaling from 1 to 2 workers and its overhead over local.

Trains K reference models of the EHR example with ``train_reference_models`` (a fresh
score store each time, so every model is trained) in these modes, each in its own
subprocess:

1. ``local-1t``: the local batched backend (fixed groups of 16) with 1 torch thread, the
   baseline: one Ray worker below also trains with 1 thread;
2. ``local-2t``: the same with 2 torch threads (the default on a 2-core machine);
3. ``ray-1w``: the ray backend on a new local Ray instance with 1 CPU (one worker),
   ``models_per_task`` auto (16: the local groups), 1 CPU per task;
4. ``ray-2w``: the same with 2 CPUs (two workers, one group each at a time);
5. ``ray-2w-single``: 2 workers, one model per task (``models_per_task: 1``): what the
   batched groups save on every worker.

The EHR example's shape: the SUPPORT2 pool (9,105 records, 78 features, via
``examples.ehr``) when SurvSet is installed, else synthetic data of that shape; the
example's MLP (``-> 128 -> 64 -> 2``, ReLU, dropout 0.1); a plan drawn by patient; 20
epochs, batch 128, Adam lr 1e-3. "train" is the best wall time of
``train_reference_models`` over ``--repeat`` runs (for Ray: the setup probe, shipping the
pool, the tasks and storing their scores), "first" the first run's (on Ray it also starts
the worker processes, which then import torch; later runs of the same driver reuse them);
"start" is ``ray.init`` of the local instance, paid once per driver. Every mode's scores
are compared with the baseline's.

    .venv/bin/python benchmarks/bench_ray.py                  # K=32 (two groups of 16), best of 2
    .venv/bin/python benchmarks/bench_ray.py --models 64 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
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
from privacy_gate.training.backends import make_backend, train_reference_models  # noqa: E402
from privacy_gate.training.ray_backend import RayOptions  # noqa: E402
from privacy_gate.training.recipe import Optimizer, Recipe  # noqa: E402
from privacy_gate.training.reference import ReferenceJob, TrainingPlan, derived_seed  # noqa: E402
from privacy_gate.training.store import ScoreStore  # noqa: E402

MODES = ("local-1t", "local-2t", "ray-1w", "ray-2w", "ray-2w-single")
BASELINE = "local-1t"


def run_child(args: argparse.Namespace, scores_file: Path) -> dict[str, Any]:
    """Train every reference model once in this process with one mode."""
    import functools

    from examples.ehr.model import make_model

    mode = args.child
    data, source = load_ehr_pool(args.data)
    patient_index, _ = data.record_table().patient_index()
    masks = draw_plan(patient_index, args.models, seed=0)
    plan = TrainingPlan(masks, tuple(derived_seed(0, k) for k in range(args.models)), 0)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, optimizer=Optimizer.ADAM,
                    learning_rate=args.lr)  # fmt: skip
    factory = functools.partial(make_model, n_features=int(data.train_inputs.shape[1]))
    start_s = 0.0
    if mode.startswith("local"):
        torch.set_num_threads(1 if mode == "local-1t" else 2)
        backend, options = "batched", None
    else:
        import ray

        os.environ["PYTHONPATH"] = os.pathsep.join(  # workers import examples.ehr
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        started = time.perf_counter()
        ray.init(address="local", num_cpus=1 if mode == "ray-1w" else 2,
                 include_dashboard=False, logging_level=logging.ERROR)  # fmt: skip
        start_s = time.perf_counter() - started
        backend = "ray"
        options = RayOptions(models_per_task=1 if mode.endswith("single") else "auto")
    walls = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as folder:
            store = ScoreStore(Path(folder), {"mode": mode}, data.n_records)
            started = time.perf_counter()
            job = ReferenceJob(factory, data, plan, recipe, store)
            scores, training = train_reference_models(job, make_backend(backend, ray=options))
            walls.append(time.perf_counter() - started)
    np.save(scores_file, scores)
    return {
        "mode": mode,
        "train_s": min(walls),
        "first_s": walls[0],
        "start_s": start_s,
        "source": source,
        "records": data.n_records,
        "per_task": (training.details.get("ray") or {}).get("models_per_task"),
        "tasks": (training.details.get("ray") or {}).get("tasks"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32, help="K reference models")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", choices=("auto", "ehr", "synthetic"), default="auto")
    parser.add_argument("--repeat", type=int, default=2, help="best of n trainings per mode")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--scores", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args, args.scores)))
        return
    modes = [BASELINE, *(m for m in args.modes if m != BASELINE)]
    results: dict[str, dict[str, Any]] = {}
    scores: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            file = Path(folder) / f"{mode}.npy"
            command = [sys.executable, __file__, "--child", mode, "--scores", str(file),
                       *sys.argv[1:]]  # fmt: skip
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            scores[mode] = np.load(file)
    first = results[BASELINE]
    print(
        f"data: {first['source']}, {first['records']} records; K={args.models}, "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}; torch "
        f"{torch.__version__}; {os.cpu_count()} CPUs; best of {args.repeat}"
    )
    base = first["train_s"]
    print(f"{'mode':<15}{'train s':>9}{'first s':>9}{'start s':>9}{'tasks':>7}{'per task':>10}"
          f"{'vs local-1t':>13}{'max |score diff|':>18}")  # fmt: skip
    for mode, r in results.items():
        diff = float(np.abs(scores[mode] - scores[BASELINE]).max())
        print(
            f"{mode:<15}{r['train_s']:>9.2f}{r['first_s']:>9.2f}{r['start_s']:>9.2f}"
            f"{r['tasks'] or '':>7}"
            f"{r['per_task'] or '':>10}{r['train_s'] / base:>12.2f}x{diff:>18.2e}"
        )
    if "ray-1w" in results and "ray-2w" in results:
        speedup = results["ray-1w"]["train_s"] / results["ray-2w"]["train_s"]
        print(f"scaling, ray 1 -> 2 workers: {speedup:.2f}x faster")
    if "ray-2w-single" in results:
        print(
            "(one model per task trains with the sequential loop: dropout draws other random "
            "streams than in the batched groups, hence its score differences)"
        )
    if "ray-2w" in results and "ray-2w-single" in results:
        saved = results["ray-2w-single"]["train_s"] / results["ray-2w"]["train_s"]
        print(f"batched groups vs one model per task (2 workers): {saved:.2f}x faster")


if __name__ == "__main__":
    main()
