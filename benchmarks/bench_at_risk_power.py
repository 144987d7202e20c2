"""The price of an at-risk test that holds its size for any IN/OUT variance ratio.

The Berger-Boos test (`privacy_gate.at_risk`) replaced the larger of the pooled and the
Welch noncentral-t p-values (Welch's estimated degrees of freedom: liberal at the tiny
levels Benjamini-Hochberg uses when the variances differ). This script measures, in one
run, on Gaussian records of known true AUC:

1. power of both tests (Monte Carlo, same records) at the EHR example's SD ratios
   (0.63-1.04) and at equal variances, at BH's first-step level for 9,105 patients;
2. the detectable AUC (80% power) of the new test by its formula, next to the old test's
   (equal variances), for K = 32 ... 256;
3. the size of both at the boundary (true AUC = 0.9) at SD ratio 3, at level 1e-3.

Printed: each figure and the ratio new / old. Command (about 2 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_at_risk_power.py
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy import special, stats

from privacy_gate.at_risk import berger_boos_beta, detectable_auc, record_p_values
from privacy_gate.record_stats import record_moments

N_PATIENTS = 9105
FDR = 0.05
ALPHA = FDR / N_PATIENTS
AT_RISK = 0.9


def _records(auc: float, k: int, sd_ratio: float, n: int, rng: np.random.Generator) -> tuple:
    h = k // 2
    scores = rng.standard_normal((k, n))
    scores[:h] *= sd_ratio
    scores[:h] += math.sqrt(1.0 + sd_ratio**2) * special.ndtri(auc)
    masks = np.zeros((k, n), dtype=bool)
    masks[:h] = True
    return scores, masks


def old_p_values(scores: np.ndarray, masks: np.ndarray, at_risk: float) -> np.ndarray:
    """The replaced test: max(pooled, Welch) noncentral-t tails at the boundary."""
    m = record_moments(scores, masks)
    n1, n2 = m.n_in.astype(float), m.n_out.astype(float)
    v1, v2 = m.sd_in**2 * n1 / (n1 - 1), m.sd_out**2 * n2 / (n2 - 1)
    d0 = special.ndtri(at_risk)
    diff = m.mu_in - m.mu_out
    sp = ((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2)
    inv = 1 / n1 + 1 / n2
    pooled = stats.nct.sf(diff / np.sqrt(sp * inv), n1 + n2 - 2, math.sqrt(2) * d0 / np.sqrt(inv))
    a, b = v1 / n1, v2 / n2
    df = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))
    welch = stats.nct.sf(diff / np.sqrt(a + b), df, d0 * np.sqrt(v1 + v2) / np.sqrt(a + b))
    return np.asarray(np.maximum(pooled, welch))


def main() -> None:
    started = time.monotonic()
    beta = berger_boos_beta(FDR, N_PATIENTS)
    rng = np.random.default_rng(0)
    n = 20_000
    print(f"level {ALPHA:.3g} (fdr {FDR} / {N_PATIENTS} patients), beta {beta:.3g}")
    print("\n1. power, Monte Carlo on the same records (20,000 per row)")
    print(f"{'K':>4} {'SD ratio':>8} {'true AUC':>9} {'old':>7} {'new':>7} {'new/old':>8}")
    for k, auc in ((64, 0.998), (128, 0.99), (256, 0.98)):
        for sd_ratio in (0.63, 0.8, 1.0, 1.04):
            scores, masks = _records(auc, k, sd_ratio, n, rng)
            old = float(np.mean(old_p_values(scores, masks, AT_RISK) <= ALPHA))
            new_p = record_p_values(record_moments(scores, masks), AT_RISK, beta)
            new = float(np.mean(new_p <= ALPHA))
            ratio = new / old if old else float("nan")
            print(f"{k:>4} {sd_ratio:>8} {auc:>9} {old:>7.3f} {new:>7.3f} {ratio:>8.2f}")
    print("\n2. detectable AUC (80% power, equal variances), new test by its formula")
    print(f"{'K':>4} {'new':>9} {'probit':>7}")
    for k in (32, 64, 128, 256):
        auc = detectable_auc(AT_RISK, k // 2, k // 2, ALPHA, beta=beta)
        print(f"{k:>4} {auc:>9.5f} {special.ndtri(auc):>7.3f}")
    print("\n3. size at the boundary, SD ratio 3, level 1e-3 (200,000 records, K = 32)")
    scores, masks = _records(AT_RISK, 32, 3.0, 200_000, rng)
    old = float(np.mean(old_p_values(scores, masks, AT_RISK) <= 1e-3))
    new_p = record_p_values(record_moments(scores, masks), AT_RISK, 1e-5)
    new = float(np.mean(new_p <= 1e-3))
    print(f"old {old / 1e-3:.2f} x nominal, new {new / 1e-3:.2f} x nominal")
    print(f"\n{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
