"""Benchmark of ``privacy-gate score --no-plots`` at MIMIC-CXR scale.

Generates realistic synthetic inputs (N records, K reference models, patients with
several records each, subgroup columns with a small group and missing values, a
release candidate), then:

1. times ``privacy-gate score --no-plots`` run as a subprocess (import time and file
   I/O count): wall time and the child's peak RSS;
2. times the pipeline's stages in-process (load, record stats, noise floor, patients,
   subgroups, attacks, write);
3. times a straightforward per-record Python loop computing the same per-record
   figures on the first ``--baseline-records`` records, checks it agrees with the
   vectorised code, and extrapolates it linearly to N.

Generation time is excluded. Thread settings are left as the environment has them.

    .venv/bin/python benchmarks/bench_score.py            # N=377,110, K=200
    .venv/bin/python benchmarks/bench_score.py --records 20000 --models 64
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

GOAL_SECONDS = 5.0
GOAL_RSS_BYTES = 2 * 1024**3
BENCH_KEY = "privacy-gate-benchmark-key"  # used only if the environment sets no key
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

SEXES = ("F", "M")
RACES = ("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "ASIAN", "OTHER")
RACE_SHARES = (0.64, 0.17, 0.06, 0.04, 0.04)  # + 5% UNKNOWN / missing
AGE_BANDS = ("18-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+")
AGE_SHARES = (0.07, 0.08, 0.12, 0.18, 0.22, 0.18, 0.13, 0.02)


# --------------------------------------------------------------------------- inputs


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=377_110, help="N (MIMIC-CXR: 377,110)")
    parser.add_argument("--models", type=int, default=200, help="K reference models (even)")
    parser.add_argument(
        "--patients-ratio",
        type=float,
        default=65_379 / 377_110,
        help="patients per record (MIMIC-CXR: 65,379 / 377,110 = 0.173)",
    )
    parser.add_argument(
        "--subgroups",
        default="sex,race,age_band",
        help="comma-separated subgroup columns among sex, race, age_band ('' for none)",
    )
    parser.add_argument(
        "--task", default="multiclass", choices=["binary", "multiclass", "multilabel"]
    )
    parser.add_argument("--baseline-records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="subprocess runs of score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "privacy_gate_bench",
        help="where signals.npz, records.csv, config.yaml and the outputs go",
    )
    parser.add_argument("--regenerate", action="store_true", help="ignore cached inputs")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.models < 4 or args.models % 2:
        parser.error("--models must be even and at least 4")
    if not 0.0 < args.patients_ratio <= 1.0:
        parser.error("--patients-ratio must be in (0, 1]")
    return args


def _choice(
    rng: np.random.Generator, values: tuple[str, ...], shares: tuple[float, ...], n: int
) -> NDArray[Any]:
    p = np.asarray(shares, dtype=np.float64)
    options = np.asarray((*values, "UNKNOWN") if p.sum() < 1.0 else values, dtype=object)
    if p.sum() < 1.0:
        p = np.r_[p, 1.0 - p.sum()]
    return options[rng.choice(len(options), size=n, p=p / p.sum())]


def generate(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Write signals.npz, records.csv and config.yaml; return what was planted."""
    rng = np.random.default_rng(args.seed)
    n, k = args.records, args.models
    n_patients = max(1, min(n, round(n * args.patients_ratio)))
    # Every patient gets one record; the rest go to patients with a skewed (lognormal)
    # propensity, so record counts per patient range from 1 to a few dozen (MIMIC-CXR: mean 5.8).
    propensity = rng.lognormal(0.0, 0.8, n_patients)
    extra = rng.choice(n_patients, size=n - n_patients, p=propensity / propensity.sum())
    patient_of_record = np.concatenate([np.arange(n_patients), extra])
    # Release candidate: about 80% of the patients are in its training data. The audit
    # pool lists the training records first, then the held-out ones (docs/statistics.md).
    member_patient = rng.random(n_patients) < 0.8
    rng.shuffle(patient_of_record)
    patient_of_record = patient_of_record[
        np.argsort(~member_patient[patient_of_record], kind="stable")
    ]
    target_members = member_patient[patient_of_record]

    # Plan: each patient IN for exactly K/2 reference models, all its records together.
    patient_masks = np.argsort(rng.random((k, n_patients)), axis=0) < k // 2
    masks = np.ascontiguousarray(patient_masks[:, patient_of_record])  # (K, N), C order
    del patient_masks

    # Scores (logit of the true-label confidence): a per-record level and spread, a
    # tiny membership effect everywhere and a strong one on a few records (the exposed
    # tail, over-represented in a small age band).
    level = rng.normal(2.0, 1.5, n).astype(np.float32)
    spread = rng.uniform(0.4, 1.2, n).astype(np.float32)
    effect = np.full(n, 0.02, dtype=np.float32) * spread
    age = _choice(rng, AGE_BANDS, AGE_SHARES, n)
    n_planted = max(1, n // 1000)
    small = np.flatnonzero(age == "90+")
    planted = np.unique(
        np.concatenate(
            [
                rng.choice(n, size=n_planted - n_planted // 4, replace=False),
                rng.choice(small, size=min(len(small), n_planted // 4), replace=False)
                if len(small)
                else np.array([], dtype=np.int64),
            ]
        )
    )
    effect[planted] = (rng.uniform(1.5, 4.0, len(planted)) * spread[planted]).astype(np.float32)
    scores = np.empty((k, n), dtype=np.float32)
    for model in range(k):
        row = rng.standard_normal(n, dtype=np.float32)
        row *= spread
        row += level
        row += effect * masks[model]
        scores[model] = row
    target_scores = level + spread * rng.standard_normal(n, dtype=np.float32)
    target_scores += effect * target_members
    np.savez(
        workdir / "signals.npz",
        scores=scores,
        masks=masks,
        target_scores=target_scores,
        target_members=target_members,
        task=np.array(args.task),
    )
    del scores, masks

    sex = _choice(rng, SEXES, (0.48, 0.51), n)  # ~1% missing
    race = _choice(rng, RACES, RACE_SHARES, n)
    columns = {"sex": sex, "race": race, "age_band": age}
    chosen = [c for c in args.subgroups.split(",") if c]
    unknown = sorted(set(chosen) - set(columns))
    if unknown:
        raise SystemExit(f"unknown subgroup column(s) {unknown}; choose among {sorted(columns)}")
    patient_ids = np.char.add("p", (10_000_000 + patient_of_record).astype(str))
    with (workdir / "records.csv").open("w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(["record_id", "patient_id", *columns]) + "\n")
        for i in range(n):
            group = "train" if target_members[i] else "holdout"
            handle.write(f"{group}/{i},{patient_ids[i]},{sex[i]},{race[i]},{age[i]}\n")
    subgroup_list = "[" + ", ".join(chosen) + "]"
    (workdir / "config.yaml").write_text(
        f"""subgroups: {subgroup_list}
risk:
  at_risk_auc: 0.9
  fpr: [0.001, 0.01]
  tail_quantile: 0.99
  min_group_size: 20
gate:
  max_patient_auc: 0.95
  max_patients_at_risk: 0
  fdr: 0.05
  max_aggregate_auc: 0.6
  max_aggregate_tpr_at_fpr:
    0.001: 0.01
  max_subgroup_relative_change: 1.0
  subgroup_alpha: 0.05
  max_detectable_auc: 0.999
""",
        encoding="utf-8",
    )
    return {"patients": n_patients, "planted_records": len(planted)}


def _inputs(args: argparse.Namespace) -> tuple[Path, dict[str, Any], float]:
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    params = {
        key: getattr(args, key)
        for key in ("records", "models", "patients_ratio", "subgroups", "task", "seed")
    }
    stamp = workdir / "params.json"
    files = [workdir / f for f in ("signals.npz", "records.csv", "config.yaml")]
    if (
        not args.regenerate
        and stamp.exists()
        and all(f.exists() for f in files)
        and json.loads(stamp.read_text())["params"] == params
    ):
        return workdir, json.loads(stamp.read_text())["planted"], 0.0
    start = time.perf_counter()
    planted = generate(args, workdir)
    stamp.write_text(json.dumps({"params": params, "planted": planted}))
    return workdir, planted, time.perf_counter() - start


# ----------------------------------------------------------------- subprocess timing


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PRIVACY_GATE_PSEUDONYM_KEY", BENCH_KEY)
    return env


def _run_child(command: list[str]) -> tuple[float, int, int, str]:
    """Run ``command``; return (wall seconds, peak RSS bytes, exit code, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env()
    )
    assert proc.stdout is not None
    output = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return wall, usage.ru_maxrss * scale, proc.returncode, output


def time_score_subprocess(workdir: Path, repeat: int) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "privacy_gate",
        "score",
        "--signals",
        str(workdir / "signals.npz"),
        "--records",
        str(workdir / "records.csv"),
        "--config",
        str(workdir / "config.yaml"),
        "--out",
        str(workdir / "out"),
        "--no-plots",
    ]
    walls, peaks = [], []
    output = ""
    for _ in range(repeat):
        wall, peak, code, output = _run_child(command)
        if code not in (0, 1):
            raise SystemExit(f"privacy-gate score failed (exit {code}):\n{output}")
        walls.append(wall)
        peaks.append(peak)
    imports = [
        _run_child([sys.executable, "-c", "import privacy_gate.cli"])[0] for _ in range(repeat)
    ]
    python_only = [_run_child([sys.executable, "-c", "pass"])[0] for _ in range(repeat)]
    return {
        "command": " ".join(["privacy-gate", *command[3:]]),
        "wall_s": walls,
        "peak_rss_bytes": peaks,
        "import_s": min(imports),
        "python_startup_s": min(python_only),
        "exit_code": code,
        "output": output.strip(),
    }


# -------------------------------------------------------------------- stage timing


@contextmanager
def _patched(owner: Any, name: str, stage: str, times: dict[str, float]) -> Iterator[None]:
    original = getattr(owner, name, None)
    if original is None:  # the pipeline no longer has this stage: its time goes to "rest"
        yield
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times[stage] = times.get(stage, 0.0) + time.perf_counter() - start

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def time_stages(workdir: Path) -> tuple[dict[str, float], float]:
    """Run ``pipeline.score(..., plots=False)`` in-process with its stages timed."""
    os.environ.setdefault("PRIVACY_GATE_PSEUDONYM_KEY", BENCH_KEY)
    from privacy_gate import pipeline
    from privacy_gate.records import RecordTable

    times: dict[str, float] = {}
    wrapped = [
        (pipeline, "load_config", "load config"),
        (pipeline, "load_signals", "load signals.npz (+ validation)"),
        (pipeline, "load_records", "load records.csv (+ validation)"),
        (pipeline, "file_sha256", "input digests (SHA-256)"),
        (pipeline, "compute_record_stats", "record stats"),
        (RecordTable, "patient_index", "patient index"),
        (RecordTable, "id_rank", "record id ranks"),
        (pipeline, "aggregate_patients", "patients: aggregate"),
        (pipeline, "record_p_values", "patients: at-risk p-values (records)"),
        (pipeline, "patient_p_values", "patients: at-risk p-values (patients)"),
        (pipeline, "compute_noise_floor", "noise floor"),
        (RecordTable, "subgroup_column", "subgroups: columns"),
        (pipeline, "patient_values", "subgroups: values per patient"),
        (pipeline, "analyse_subgroups", "subgroups: tail and tests"),
        (pipeline, "audit_power", "power"),
        (pipeline, "run_attacks", "attacks (LiRA, RMIA)"),
        (pipeline, "evaluate_gate", "gate"),
        (pipeline, "write_outputs", "write outputs"),
    ]
    start = time.perf_counter()
    with _all_patched(wrapped, times):
        pipeline.score(
            workdir / "signals.npz",
            workdir / "records.csv",
            workdir / "out_stages",
            config_path=workdir / "config.yaml",
            plots=False,
        )
    total = time.perf_counter() - start
    times["rest (pseudonyms, summary)"] = total - sum(times.values())
    return times, total


@contextmanager
def _all_patched(wrapped: list[tuple[Any, str, str]], times: dict[str, float]) -> Iterator[None]:
    if not wrapped:
        yield
        return
    owner, name, stage = wrapped[0]
    with _patched(owner, name, stage, times), _all_patched(wrapped[1:], times):
        yield


# ------------------------------------------------------------------------- baseline


def baseline_loop(
    scores: NDArray[Any], masks: NDArray[np.bool_], fprs: tuple[float, ...]
) -> dict[str, NDArray[np.float64]]:
    """The straightforward per-record loop: NumPy per column, scipy.stats.norm per value."""
    from scipy.stats import norm

    n = scores.shape[1]
    out: dict[str, NDArray[np.float64]] = {name: np.empty(n) for name in ("auc", "auc_se", "mu")}
    tprs = np.empty((len(fprs), n))
    for i in range(n):
        column = scores[:, i].astype(np.float64)
        member = masks[:, i]
        s_in, s_out = column[member], column[~member]
        mu_in, mu_out = np.mean(s_in), np.mean(s_out)
        sd_in = np.std(s_in) if s_in.max() != s_in.min() else 1e-6
        sd_out = np.std(s_out) if s_out.max() != s_out.min() else 1e-6
        auc = norm.cdf((mu_in - mu_out) / math.sqrt(sd_in**2 + sd_out**2))
        auc = min(max(auc, 0.5), 1.0 - 1e-10)
        n_in, n_out = len(s_in), len(s_out)
        q0 = auc / (2.0 - auc)
        q1 = 2.0 * auc**2 / (1.0 + auc)
        variance = (
            auc * (1.0 - auc) + (n_in - 1) * (q0 - auc**2) + (n_out - 1) * (q1 - auc**2)
        ) / (n_in * n_out)
        out["auc"][i] = auc
        out["auc_se"][i] = math.sqrt(max(variance, 0.0))
        for j, f in enumerate(fprs):
            tprs[j, i] = norm.cdf((mu_in - mu_out) / sd_in + sd_out / sd_in * norm.ppf(f))
        out["mu"][i] = math.sqrt(2.0) * norm.ppf(auc)
    out["tpr"] = tprs
    return out


def time_baseline(workdir: Path, n_baseline: int) -> dict[str, Any]:
    from privacy_gate.config import load_config
    from privacy_gate.record_stats import compute_record_stats

    fprs = load_config(workdir / "config.yaml").risk.fpr
    with np.load(workdir / "signals.npz") as npz:
        n_total = npz["masks"].shape[1]
        n_baseline = min(n_baseline, n_total)
        scores = np.ascontiguousarray(npz["scores"][:, :n_baseline])
        masks = np.ascontiguousarray(npz["masks"][:, :n_baseline])
    start = time.perf_counter()
    loop = baseline_loop(scores, masks, fprs)
    loop_s = time.perf_counter() - start
    vector_times = []
    for _ in range(5):
        start = time.perf_counter()
        stats = compute_record_stats(scores, masks, fprs)
        vector_times.append(time.perf_counter() - start)
    vector_s = min(vector_times)
    diff = max(
        float(np.max(np.abs(loop["auc"] - stats.auc))),
        float(np.max(np.abs(loop["auc_se"] - stats.auc_se))),
        float(np.max(np.abs(loop["tpr"] - stats.tpr))),
        float(np.max(np.abs(loop["mu"] - stats.mu))),
    )
    return {
        "records": n_baseline,
        "loop_s": loop_s,
        "vectorised_s": vector_s,
        "loop_extrapolated_s": loop_s * n_total / n_baseline,
        "max_abs_difference": diff,
    }


# ---------------------------------------------------------------------------- main


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 1024**2:,.0f} MiB"


def _threads() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = ", ".join(f"{v}={os.environ[v]}" for v in THREAD_VARIABLES if v in os.environ)
    return f"{cores} usable core(s); {settings or 'no thread variables set'}"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    workdir, planted, gen_s = _inputs(args)
    signals_size = (workdir / "signals.npz").stat().st_size
    records_size = (workdir / "records.csv").stat().st_size
    print(
        f"Inputs: N={args.records:,} records, {planted['patients']:,} patients, "
        f"K={args.models} models, task={args.task}, subgroups=[{args.subgroups}], "
        f"{planted['planted_records']} records with a planted membership effect"
    )
    print(
        f"  signals.npz {_mib(signals_size)}, records.csv {_mib(records_size)} in {workdir}"
        + (f" (generated in {gen_s:.1f} s, not timed)" if gen_s else " (cached)")
    )
    print(f"  {_threads()}; Python {sys.version.split()[0]}, NumPy {np.__version__}")

    sub = time_score_subprocess(workdir, args.repeat)
    wall, peak = min(sub["wall_s"]), max(sub["peak_rss_bytes"])
    print(f"\n$ {sub['command']}")
    print("  " + "\n  ".join(sub["output"].splitlines()[:3]))
    print(
        f"\nscore (subprocess, best of {args.repeat}): wall {wall:.2f} s "
        f"(runs: {', '.join(f'{w:.2f}' for w in sub['wall_s'])}), peak RSS {_mib(peak)}"
    )
    print(
        f"  of which interpreter start-up {sub['python_startup_s']:.2f} s and "
        f"'import privacy_gate.cli' {sub['import_s']:.2f} s (incl. start-up)"
    )
    ok_time, ok_memory = wall <= GOAL_SECONDS, peak <= GOAL_RSS_BYTES
    print(
        f"  goal <= {GOAL_SECONDS:.0f} s: {'met' if ok_time else 'NOT met'}; "
        f"goal <= {_mib(GOAL_RSS_BYTES)} peak: {'met' if ok_memory else 'NOT met'}"
    )

    result: dict[str, Any] = {"inputs": vars(args) | planted, "score": sub}
    if not args.skip_stages:
        stages, total = time_stages(workdir)
        print(f"\nStages (in-process, after imports; total {total:.2f} s):")
        width = max(len(s) for s in stages)
        for stage, seconds in stages.items():
            print(f"  {stage:<{width}}  {seconds:6.3f} s  {100 * seconds / total:5.1f} %")
        result["stages_s"] = stages

    if not args.skip_baseline:
        base = time_baseline(workdir, args.baseline_records)
        ratio_stats = base["loop_s"] / base["vectorised_s"]
        ratio_full = base["loop_extrapolated_s"] / wall
        print(
            f"\nBaseline: per-record Python loop (np.mean/np.std per column, scipy.stats.norm) "
            f"on the first {base['records']:,} records: {base['loop_s']:.2f} s; "
            f"max |difference| vs vectorised {base['max_abs_difference']:.1e}"
        )
        print(
            f"  extrapolated linearly to N={args.records:,}: {base['loop_extrapolated_s']:.0f} s "
            f"(an extrapolation, not a measurement)"
        )
        print()
        rows = [
            (
                "record stats, first {:,} records".format(base["records"]),
                f"{base['loop_s']:.2f} s",
                f"{base['vectorised_s'] * 1e3:.1f} ms",
                f"{ratio_stats:,.0f}x",
            ),
            (
                f"full score, N={args.records:,} (loop extrapolated)",
                f"{base['loop_extrapolated_s']:.0f} s",
                f"{wall:.2f} s",
                f"{ratio_full:,.0f}x",
            ),
        ]
        header = ("", "per-record loop", "privacy-gate", "ratio")
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
        for row in [header, *rows]:
            print("  " + "  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)))
        result["baseline"] = base | {"ratio_record_stats": ratio_stats, "ratio_full": ratio_full}

    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\n(benchmark process itself peaked at {_mib(own * 1024)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
