"""End-to-end audit of a small tabular classifier on a real cohort, with planted risk.

The Wisconsin diagnostic breast cancer data (569 patients, ships with scikit-learn)
stands in for a clinical cohort. A few labels are deliberately flipped: a flexible
model must memorise such records to fit them, which is exactly the membership signal
that lets an attacker tell whether a patient was in the training set.

Steps: split the cohort into the release candidate's training records and a holdout;
draw K reference subsets over the pool (every record IN for exactly K/2 models);
train the K reference models and the candidate as one batched NumPy computation; write
``signals.npz`` and ``records.csv``; run ``privacy-gate score`` on them.

Run: ``python examples/breast_cancer/audit_breast_cancer.py --out out/breast_cancer``
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from privacy_gate.cli import main as privacy_gate_main

FloatArray = NDArray[np.float64]


def load_cohort(
    n_mislabeled: int, seed: int
) -> tuple[FloatArray, NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Standardised features, (possibly flipped) labels, true labels, flipped indices."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    features = np.asarray(data.data, dtype=np.float64)
    features = (features - features.mean(0)) / features.std(0)
    true_labels = np.asarray(data.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(true_labels), size=n_mislabeled, replace=False))
    labels = true_labels.copy()
    labels[flipped] = 1 - labels[flipped]
    return features, labels, true_labels, flipped


def balanced_plan(n_records: int, n_models: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """``(n_models, n_records)`` masks: every record IN for exactly n_models / 2 models."""
    keys = rng.random((n_models, n_records))
    ranks = keys.argsort(axis=0).argsort(axis=0)
    return ranks < n_models // 2


def train_batched_mlp(
    features: FloatArray,
    labels: NDArray[np.int64],
    masks: NDArray[np.bool_],
    *,
    hidden: int,
    steps: int,
    learning_rate: float,
    seed: int,
) -> FloatArray:
    """Train one MLP per row of ``masks`` (full batch, Adam), all at once; return the
    logits ``(n_models, n_records)`` of every model on every record."""
    rng = np.random.default_rng(seed)
    n_models = masks.shape[0]
    dim = features.shape[1]
    params = [
        rng.normal(0, 1 / np.sqrt(dim), (n_models, dim, hidden)),
        np.zeros((n_models, 1, hidden)),
        rng.normal(0, 1 / np.sqrt(hidden), (n_models, hidden, 1)),
        np.zeros((n_models, 1, 1)),
    ]
    moments = [np.zeros_like(p) for p in params]
    velocities = [np.zeros_like(p) for p in params]
    weights = masks / masks.sum(axis=1, keepdims=True)  # mean loss over each model's IN set
    y = labels[None, :].astype(np.float64)
    for step in range(1, steps + 1):
        w1, b1, w2, b2 = params
        pre = features[None] @ w1 + b1  # (K, N, H)
        act = np.maximum(pre, 0.0)
        logits = (act @ w2 + b2)[..., 0]  # (K, N)
        grad_logits = (1 / (1 + np.exp(-logits)) - y) * weights
        g_w2 = act.transpose(0, 2, 1) @ grad_logits[..., None]
        g_b2 = grad_logits.sum(axis=1)[:, None, None]
        g_act = grad_logits[..., None] @ w2.transpose(0, 2, 1)
        g_pre = g_act * (pre > 0)
        g_w1 = features.T[None] @ g_pre
        g_b1 = g_pre.sum(axis=1, keepdims=True)
        for p, g, m, v in zip(params, (g_w1, g_b1, g_w2, g_b2), moments, velocities, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= learning_rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    w1, b1, w2, b2 = params
    return (np.maximum(features[None] @ w1 + b1, 0.0) @ w2 + b2)[..., 0]


def membership_scores(logits: FloatArray, labels: NDArray[np.int64]) -> FloatArray:
    """Logit-scaled confidence in the true label; for a binary logit z it is +/- z."""
    return np.where(labels[None, :] == 1, logits, -logits)


def build_inputs(out: Path, *, n_models: int, n_mislabeled: int, seed: int) -> list[int]:
    """Write signals.npz and records.csv; return the pool rows of the flipped records."""
    features, labels, true_labels, flipped = load_cohort(n_mislabeled, seed)
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(labels))
    train, holdout = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    pool = np.r_[train, holdout]  # docs/statistics.md: candidate's training records, then holdout
    x, y = features[pool], labels[pool]
    masks = balanced_plan(len(pool), n_models, rng)
    target_members = np.r_[np.ones(len(train), bool), np.zeros(len(holdout), bool)]
    all_masks = np.vstack([masks, target_members[None]])
    logits = train_batched_mlp(
        x, y, all_masks, hidden=32, steps=400, learning_rate=0.02, seed=seed + 2
    )
    scores = membership_scores(logits, y)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "signals.npz",
        scores=scores[:-1],
        masks=masks,
        target_scores=scores[-1],
        target_members=target_members,
        task=np.array("binary"),
    )
    radius = features[pool, 0]
    bands = np.digitize(radius, np.quantile(radius, [1 / 3, 2 / 3]))
    with (out / "records.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record_id", "patient_id", "diagnosis", "tumour_size"])
        for row, original in enumerate(pool):
            split = "train" if row < len(train) else "holdout"
            index = row if row < len(train) else row - len(train)
            writer.writerow(
                [
                    f"{split}/{index}",
                    f"patient-{original:04d}",
                    "malignant" if true_labels[original] == 0 else "benign",
                    ("small", "medium", "large")[bands[row]],
                ]
            )
    return [int(np.flatnonzero(pool == f)[0]) for f in flipped]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/breast_cancer"))
    parser.add_argument("--reference-models", type=int, default=64)
    parser.add_argument("--mislabeled", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("policy.yaml"))
    parser.add_argument(
        "--exit-code",
        action="store_true",
        help="exit with the gate's code (0 pass, 1 fail) instead of 0",
    )
    args = parser.parse_args(argv)
    flipped_rows = build_inputs(
        args.out, n_models=args.reference_models, n_mislabeled=args.mislabeled, seed=args.seed
    )
    print(
        f"Wrote {args.out}/signals.npz and records.csv ({args.reference_models} reference "
        f"models); deliberately mislabeled pool rows: {flipped_rows}"
    )
    code = privacy_gate_main(
        [
            "score",
            "--signals",
            str(args.out / "signals.npz"),
            "--records",
            str(args.out / "records.csv"),
            "--config",
            str(args.config),
            "--out",
            str(args.out),
        ]
    )
    print(f"Open {args.out / 'report.html'} in a browser for the full report.")
    return code if args.exit_code or code == 2 else 0


if __name__ == "__main__":
    sys.exit(main())
