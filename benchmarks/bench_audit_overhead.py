"""Audit overhead on the EHR example: the whole audit with K reference models divided by
the wall time of training the release candidate once.

    .venv/bin/python benchmarks/bench_audit_overhead.py              # K = 32
    .venv/bin/python benchmarks/bench_audit_overhead.py --models 64

Both are measured in this process on the same data, recipe and threads. Peak memory is
the process's maximum RSS after each phase (ru_maxrss; it only grows).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    job = load_job(ROOT / "examples" / "ehr" / "audit.yaml")
    data = load_support2(**job.data_args)
    inputs, labels = data.pool()
    members = np.flatnonzero(data.is_member()).astype(np.intp)

    start = time.perf_counter()
    candidate = train_one(make_model, inputs, labels, members, job.recipe, seed=0)
    candidate_seconds = time.perf_counter() - start
    candidate_peak = _peak_mib()

    policy = parse_config(job.policy.to_dict())
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run_audit(
            make_model,
            data,
            recipe=job.recipe,
            config=policy,
            reference_models=args.models,
            backend=args.backend,
            seed=0,
            candidate=candidate,
            out_dir=out,
            plots=True,
        )
        audit_seconds = time.perf_counter() - start
    training = result.report["audit"]["training"]
    print(
        f"EHR example (support2): {data.n_records} records, recipe {job.recipe.epochs} epochs, "
        f"batch {job.recipe.batch_size}; K = {args.models}, backend {training['backend']}"
    )
    print(
        f"  candidate training once:     {candidate_seconds:7.1f} s   "
        f"(peak RSS {candidate_peak:.0f} MiB)"
    )
    print(
        f"  whole audit (train K, score, report + plots): {audit_seconds:7.1f} s   "
        f"(peak RSS {_peak_mib():.0f} MiB), of which reference training "
        f"{training['training_seconds']:.1f} s"
    )
    print(f"  overhead = audit / candidate = {audit_seconds / candidate_seconds:.2f}  (goal <= 4)")


if __name__ == "__main__":
    main()
