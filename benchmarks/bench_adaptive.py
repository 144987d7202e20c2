"""Adaptive audits against a fixed K, on the EHR example, in one run.

Two candidates of ``examples/ehr/audit.yaml``: the leaky MLP of the recipe, and the same
model trained with the DP-SGD settings the report recommends (noise 0.7192, clip 1.54).
Each is audited with ``reference_models: auto`` and with a fixed K = 64, every audit in a
fresh directory (no cached models), and the script prints K used, wall time and verdict,
with the ratio auto / fixed::

    python benchmarks/bench_adaptive.py     # ~8 min on 2 cores (DP trains one model at a time)
    python benchmarks/bench_adaptive.py --leaky-only

Expected (issue 14): the leaky model fails at K <= 32 for at most 60% of the fixed cost;
the private model passes at the K the power rules need (about 48-64 for ~9,000 patients).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from privacy_gate.gate import reference_models_for_policy  # noqa: E402
from privacy_gate.training.audit import run_audit  # noqa: E402
from privacy_gate.training.backends import make_backend  # noqa: E402
from privacy_gate.training.job import load_job, resolve  # noqa: E402
from privacy_gate.training.recipe import DPSettings  # noqa: E402
from privacy_gate.training.reference import derived_seed  # noqa: E402
from privacy_gate.training.sequential import train_one  # noqa: E402

CONFIG = REPO / "examples" / "ehr" / "audit.yaml"
DP = DPSettings(noise_multiplier=0.7192, max_grad_norm=1.54)


def _audit(
    name: str, recipe: Any, k: int | str, factory: Any, data: Any, job: Any
) -> dict[str, Any]:
    members = np.flatnonzero(data.is_member()).astype(np.intp)
    inputs, labels = data.pool()
    candidate = train_one(factory, inputs, labels, members, recipe, seed=derived_seed(job.seed, -1))
    with tempfile.TemporaryDirectory(prefix=f"bench_adaptive_{name}_") as out:
        started = time.perf_counter()
        result = run_audit(
            factory,
            data,
            recipe=recipe,
            config=job.policy,
            reference_models=k,
            seed=job.seed,
            candidate=candidate,
            out_dir=out,
            plots=False,
            backend=make_backend("auto", workers=2 if recipe.dp is not None else 1),
        )
        seconds = time.perf_counter() - started
    adaptive = result.report.adaptive
    return {
        "k": result.report.audit.reference_models,
        "seconds": seconds,
        "verdict": result.decision.status.value,
        "stopped": adaptive.stopped if adaptive else "fixed",
        "looks": [look.reference_models for look in adaptive.looks] if adaptive else [k],
        "rules": sorted({v.rule.value for v in result.decision.violations}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaky-only", action="store_true")
    args = parser.parse_args(argv)
    job = load_job(CONFIG)
    factory = functools.partial(resolve(job.model, "model"), **job.model_args)
    data = resolve(job.data, "data")(**job.data_args)
    _, patients = data.record_table().patient_index()
    need = reference_models_for_policy(job.policy, data.n_records, len(patients))
    print(
        f"EHR pool: {data.n_records} records, {len(patients)} patients; "
        f"the power rules need K = {need}"
    )
    cases = [("leaky", job.recipe)]
    if not args.leaky_only:
        cases.append(
            ("private (DP-SGD)", dataclasses.replace(job.recipe, dp=DP, max_grad_norm=None))
        )
    print(f"{'model':18}{'mode':7}{'K':>5}{'looks':>18}{'seconds':>9}  verdict")
    for name, recipe in cases:
        fixed = _audit(name, recipe, 64, factory, data, job)
        auto = _audit(name, recipe, "auto", factory, data, job)
        for mode, row in (("fixed", fixed), ("auto", auto)):
            looks = ",".join(str(k) for k in row["looks"])
            print(f"{name:18}{mode:7}{row['k']:>5}{looks:>18}{row['seconds']:>9.1f}  "
                  f"{row['verdict']} ({row['stopped']})")  # fmt: skip
        print(f"{'':18}auto/fixed: K {auto['k'] / fixed['k']:.2f}, "
              f"time {auto['seconds'] / fixed['seconds']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
