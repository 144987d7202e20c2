"""Benchmark of the record-AUC estimators (``risk.variance``: plain vs shrunk) against a
200-model truth from a real small model.

The truth: 200 reference models of the EHR example's MLP on its SUPPORT2 pool (9,105
records; synthetic data of that shape without SurvSet), trained as 100 complementary
pairs, so every record is IN for exactly 100 models and any K/2 pairs form a balanced
K-model audit. The truth AUC of a record is its plain binormal AUC over all 200 models.

For K in ``--k`` and ``--repeats`` random choices of K/2 pairs, each estimator is scored
against the truth on:

- ``recall``: share of the true top 1% of records (by AUC) that the estimate ranks in its
  own top 1% (what the audit's worst-case figures rest on);
- ``spearman``: rank correlation of estimate and truth over all records;
- ``|dAUC|``: mean absolute error over all records, and over the true top 1%;
- ``coverage``: share of the true top-1% records whose truth lies in the estimate's
  95% interval (estimate +- 1.96 Hanley-McNeil SE).

The trained scores are cached (``--cache``), so a rerun only re-scores the estimators.

    .venv/bin/python benchmarks/bench_estimators.py                     # K = 16, 32, 64
    .venv/bin/python benchmarks/bench_estimators.py --epochs 5 --data synthetic
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ehr_pool import load_ehr_pool  # noqa: E402  (benchmarks/, the script's own folder)

from examples.ehr.model import make_model  # noqa: E402
from privacy_gate.record_stats import (  # noqa: E402
    hanley_mcneil_se,
    plain_auc,
    record_moments,
)
from privacy_gate.training.batched import train_batched  # noqa: E402
from privacy_gate.training.recipe import Optimizer, Recipe  # noqa: E402
from privacy_gate.training.scoring import score_model  # noqa: E402
from privacy_gate.variance import auc_estimator  # noqa: E402

ESTIMATORS = {"plain": auc_estimator(False), "shrunk": auc_estimator(True)}
TOP = 0.01


def paired_plan(n_records: int, n_pairs: int, seed: int) -> np.ndarray:
    """``(2 * n_pairs, n_records)``: model 2j holds a random half, model 2j+1 the rest."""
    rng = np.random.default_rng(seed)
    halves = rng.random((n_pairs, n_records)) < 0.5
    return np.stack([halves, ~halves], axis=1).reshape(2 * n_pairs, n_records)


def train_truth(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """Scores ``(200, N)`` and masks of the truth models, from the cache when present."""
    cache = Path(args.cache)
    if cache.exists():
        stored = np.load(cache, allow_pickle=False)
        return stored["scores"], stored["masks"], str(stored["source"])
    data, source = load_ehr_pool(args.data)
    inputs = torch.cat([data.train_inputs, data.holdout_inputs])
    labels = torch.cat([data.train_labels, data.holdout_labels])
    masks = paired_plan(len(inputs), args.models // 2, seed=0)
    recipe = Recipe(
        epochs=args.epochs, batch_size=128, optimizer=Optimizer.ADAM, learning_rate=1e-3
    )
    scores = np.empty(masks.shape)
    start = time.perf_counter()
    for first in range(0, args.models, args.chunk):
        rows = range(first, min(first + args.chunk, args.models))
        models = train_batched(
            lambda: make_model(n_features=inputs.shape[1]),
            inputs,
            labels,
            [np.flatnonzero(masks[k]) for k in rows],
            recipe,
            seeds=list(rows),
        )
        for k, model in zip(rows, models, strict=True):
            scores[k] = score_model(model, inputs, labels, data.task)
        print(f"trained {rows.stop}/{args.models} models ({time.perf_counter() - start:.0f} s)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, scores=scores, masks=masks, source=np.array(source))
    return scores, masks, source


def evaluate(auc: np.ndarray, truth: np.ndarray, n_in: np.ndarray, n_out: np.ndarray) -> dict:
    n_top = max(1, round(TOP * len(truth)))
    true_top = np.argsort(-truth, kind="stable")[:n_top]
    est_top = np.argsort(-auc, kind="stable")[:n_top]
    se = hanley_mcneil_se(auc, n_in, n_out)
    covered = np.abs(truth[true_top] - auc[true_top]) <= 1.96 * se[true_top]
    return {
        "recall": len(np.intersect1d(true_top, est_top)) / n_top,
        "spearman": float(stats.spearmanr(auc, truth).statistic),
        "dauc": float(np.mean(np.abs(auc - truth))),
        "dauc_top": float(np.mean(np.abs(auc[true_top] - truth[true_top]))),
        "coverage": float(np.mean(covered)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=20, help="the EHR example's recipe: 20")
    parser.add_argument("--chunk", type=int, default=50, help="models trained per batch")
    parser.add_argument("--k", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--data", choices=("auto", "ehr", "synthetic"), default="auto")
    parser.add_argument("--cache", default=None, help="default: out/bench_estimators/...")
    args = parser.parse_args()
    if args.cache is None:
        args.cache = f"out/bench_estimators/truth-{args.data}-{args.models}-{args.epochs}.npz"
    scores, masks, source = train_truth(args)
    truth = plain_auc(record_moments(scores, masks))
    print(f"truth: {masks.shape[0]} models, {masks.shape[1]} records, {source}")
    print(f"truth AUC: median {np.median(truth):.3f}, 99th pct {np.quantile(truth, 0.99):.3f}")
    rng = np.random.default_rng(1)
    header = f"{'K':>4} {'estimator':>9} {'recall':>7} {'spearman':>8} {'|dAUC|':>7} "
    header += f"{'|dAUC| top':>10} {'coverage':>8}"
    print(header)
    for k in args.k:
        results: dict[str, list[dict]] = {name: [] for name in ESTIMATORS}
        for _ in range(args.repeats):
            pairs = rng.choice(masks.shape[0] // 2, k // 2, replace=False)
            rows = np.sort(np.r_[2 * pairs, 2 * pairs + 1])
            moments = record_moments(scores[rows], masks[rows])
            for name, estimator in ESTIMATORS.items():
                results[name].append(
                    evaluate(estimator(moments), truth, moments.n_in, moments.n_out)
                )
        for name, runs in results.items():
            mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
            print(
                f"{k:>4} {name:>9} {mean['recall']:>7.3f} {mean['spearman']:>8.3f} "
                f"{mean['dauc']:>7.4f} {mean['dauc_top']:>10.4f} {mean['coverage']:>8.3f}"
            )
        pairs = zip(results["shrunk"], results["plain"], strict=True)
        gain = np.mean([s["recall"] - p["recall"] for s, p in pairs])
        ratio = np.mean([s["dauc"] for s in results["shrunk"]]) / np.mean(
            [p["dauc"] for p in results["plain"]]
        )
        coverage = np.mean(
            [
                s["coverage"] - p["coverage"]
                for s, p in zip(results["shrunk"], results["plain"], strict=True)
            ]
        )
        print(
            f"{k:>4} shrunk - plain: recall {gain * 100:+.1f} points, coverage "
            f"{coverage * 100:+.1f} points, |dAUC| ratio shrunk/plain {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
