"""The reference-model plan: which records each reference model trains on.

K subsets of the audit pool, drawn by patient: every patient is IN for exactly K/2
models, and all records of a patient are IN or OUT together, so a patient's records
never inform the OUT side of their own estimate.

The plan is drawn in rounds of ``round_size`` models (16 by default), each balanced on
its own (every patient IN for half of the round) from its own random stream. So the
first ``j * round_size`` models of a larger plan are exactly the plan of that many
models: an adaptive audit (`privacy_gate.adaptive`) that stops at K has trained the
models a fixed-K audit with the same seed trains.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from privacy_gate.errors import InputError

__all__ = ["DEFAULT_REFERENCE_MODELS", "PLAN_ROUND", "draw_plan", "plan_digest"]

PLAN_ROUND = 16
"""Models per balanced round of a plan (an adaptive audit's default round, one batched
group)."""

DEFAULT_REFERENCE_MODELS = 64
"""K when none is given (run_audit, audit.yaml, the Lightning callback, the evaluator):
enough for the default policy's power rules up to about 100,000 patients (they need 50
for 9,105 patients and 60 for 100,000)."""


def draw_plan(
    patient_index: NDArray[np.intp], n_models: int, *, seed: int, round_size: int = PLAN_ROUND
) -> NDArray[np.bool_]:
    """Draw the membership matrix of the reference models.

    Args:
        patient_index: ``(n_records,)`` patient of each record, in ``[0, n_patients)``.
        n_models: K, even and at least 2.
        seed: the plan's seed (a non-negative integer).
        round_size: models per balanced round (even); the last round may be smaller.

    Returns:
        ``(n_models, n_records)`` bool: record i is IN reference model k.

    >>> plan = draw_plan(np.array([0, 0, 1, 2]), 4, seed=0)
    >>> plan.sum(axis=0).tolist(), bool((plan[:, 0] == plan[:, 1]).all())
    ([2, 2, 2, 2], True)
    """
    if isinstance(n_models, bool) or not isinstance(n_models, (int, np.integer)):
        raise InputError(f"The number of reference models must be an integer. Got {n_models!r}.")
    if n_models < 2 or n_models % 2:
        raise InputError(
            f"The number of reference models must be even and at least 2 (each patient is IN "
            f"for exactly half of them). Got {n_models} instead. HINT: 64 is the default."
        )
    if isinstance(round_size, bool) or not isinstance(round_size, int) or round_size < 2:
        raise InputError(f"A plan's round size must be an even integer >= 2. Got {round_size!r}.")
    if round_size % 2:
        raise InputError(f"A plan's round size must be even. Got {round_size}.")
    n_patients = int(patient_index.max()) + 1 if len(patient_index) else 0
    rounds = []
    for number, start in enumerate(range(0, n_models, round_size)):
        size = min(round_size, n_models - start)
        rng = np.random.default_rng([seed, number])
        # Per patient, a random half of the round: rank random keys across its models.
        ranks = rng.random((size, n_patients)).argsort(axis=0).argsort(axis=0)
        rounds.append(ranks < size // 2)
    patient_in = np.concatenate(rounds)
    return np.ascontiguousarray(patient_in[:, patient_index])


def plan_digest(masks: NDArray[np.bool_]) -> str:
    """SHA-256 of the membership matrix (shape and bits), stored in the report."""
    digest = hashlib.sha256(f"{masks.shape}".encode())
    digest.update(np.packbits(np.ascontiguousarray(masks, dtype=bool)).tobytes())
    return digest.hexdigest()
