"""Audit overhead on the EHR example: the whole audit with K reference models divided by
the wall time of training the release candidate once.

    .venv/bin/python benchmarks/bench_audit_overhead.py              # K = 32
    .venv/bin/python benchmarks/bench_audit_overhead.py --models 64
    .venv/bin/python benchmarks/bench_audit_overhead.py --repeat 3   # medians (noisy machines)

The candidate is trained with `train_one`, the plain loop without a DataLoader (the
fastest one-model loop here); the audit is `run_audit` with that candidate (train K
reference models, score, report and plots), in a fresh directory each time, so nothing
is resumed. Two comparisons, both on the same data, recipe and threads:

- warm: both in this process after an untimed candidate training and audit, alternating
  ``--repeat`` times (medians): the steady-state cost of each. Without the warm-up the
  first ``torch.optim`` optimizer of a process imports ``torch._dynamo`` (about 1 s,
  twice the candidate's own training), which a cold candidate would carry and the audit
  after it would not.
- cold: each in its own fresh process (data loading excluded), so each pays its own
  one-time costs (the candidate: that import; the audit: matplotlib and its first plots),
  as a training script and a ``privacy-gate audit`` run do; medians over ``--repeat``.

Peak memory is the maximum RSS (ru_maxrss) of the cold processes (run before this process
grows, as a child's ru_maxrss starts at its parent's).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.ehr.data import load_support2  # noqa: E402
from examples.ehr.model import make_model  # noqa: E402
from privacy_gate.config import parse_config  # noqa: E402
from privacy_gate.training.audit import run_audit  # noqa: E402
from privacy_gate.training.job import load_job  # noqa: E402
from privacy_gate.training.sequential import train_one  # noqa: E402


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Bench:
    """The EHR example's data, recipe and policy, and the two timed operations."""

    def __init__(self, models: int, backend: str) -> None:
        self.job = load_job(ROOT / "examples" / "ehr" / "audit.yaml")
        self.data = load_support2(**self.job.data_args)
        self.inputs, self.labels = self.data.pool()
        self.members = np.flatnonzero(self.data.is_member()).astype(np.intp)
        self.policy = parse_config(self.job.policy.to_dict())
        self.models, self.backend = models, backend

    def candidate(self) -> tuple[Any, float]:
        start = time.perf_counter()
        model = train_one(make_model, self.inputs, self.labels, self.members, self.job.recipe,
                          seed=0)  # fmt: skip
        return model, time.perf_counter() - start

    def audit(self, candidate: Any) -> tuple[dict[str, Any], float]:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run_audit(
                make_model,
                self.data,
                recipe=self.job.recipe,
                config=self.policy,
                reference_models=self.models,
                backend=self.backend,
                seed=0,
                candidate=candidate,
                out_dir=out,
                plots=True,
            )
            seconds = time.perf_counter() - start
        return result.report.audit.training, seconds


def _child(args: argparse.Namespace) -> dict[str, Any]:
    """One cold measurement in this fresh process."""
    import torch

    bench = _Bench(args.models, args.backend)
    if args.child == "candidate":
        model, seconds = bench.candidate()
        torch.save(model.state_dict(), args.state)
        return {"seconds": seconds, "peak_mib": _peak_mib()}
    model = make_model()
    model.load_state_dict(torch.load(args.state))
    training, seconds = bench.audit(model)
    return {"seconds": seconds, "training": training, "peak_mib": _peak_mib()}


def _cold(args: argparse.Namespace) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = {"candidate": [], "audit": []}
    with tempfile.TemporaryDirectory() as scratch:
        state = str(Path(scratch) / "candidate.pt")
        for _ in range(args.repeat):
            for child in ("candidate", "audit"):
                command = [sys.executable, __file__, "--child", child, "--state", state,
                           "--models", str(args.models), "--backend", args.backend]  # fmt: skip
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                runs[child].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs (medians)")
    parser.add_argument("--child", choices=("candidate", "audit"), help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return

    cold = _cold(args)  # first: a child's ru_maxrss starts at its parent's
    bench = _Bench(args.models, args.backend)
    candidate, _ = bench.candidate()  # warm-up, untimed
    bench.audit(candidate)
    warm_candidate, warm_audit, warm_training = [], [], []
    for _ in range(args.repeat):
        candidate, seconds = bench.candidate()
        warm_candidate.append(seconds)
        training, seconds = bench.audit(candidate)
        warm_audit.append(seconds)
        warm_training.append(training["training_seconds"])

    recipe = bench.job.recipe
    print(
        f"EHR example (support2): {bench.data.n_records} records, recipe {recipe.epochs} "
        f"epochs, batch {recipe.batch_size}; K = {args.models}, backend "
        f"{training['backend']}; medians of {args.repeat} alternating run(s)"
    )
    rows = {
        "warm": (warm_candidate, warm_audit, warm_training, None),
        "cold": (
            [r["seconds"] for r in cold["candidate"]],
            [r["seconds"] for r in cold["audit"]],
            [r["training"]["training_seconds"] for r in cold["audit"]],
            (cold["candidate"][0]["peak_mib"], cold["audit"][0]["peak_mib"]),
        ),
    }
    for name, (candidates, audits, trainings, peaks) in rows.items():
        c, a, t = (float(np.median(x)) for x in (candidates, audits, trainings))
        memory = f"; peak RSS {peaks[0]:.0f} / {peaks[1]:.0f} MiB" if peaks else ""
        print(
            f"  {name}: candidate {c:5.2f} s, whole audit {a:5.2f} s (reference training "
            f"{t:4.2f} s){memory}; overhead = audit / candidate = {a / c:.2f} (goal <= 4)"
        )


if __name__ == "__main__":
    main()
