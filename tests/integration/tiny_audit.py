"""A tiny model and data loader for audit tests (importable as an audit.yaml target)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privacy_gate.training.data import AuditData


class SubclassedBatchNorm1d(nn.BatchNorm1d):
    """A BatchNorm subclass: its forward could be its own, so the batched engine refuses
    it and reference models train one at a time (a model that cannot be batched)."""


def make_model(n_features: int = 6, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def load_data(n_records: int = 160, seed: int = 0, n_features: int = 6) -> AuditData:
    """Two Gaussian classes; every 4th patient has two records; one subgroup column."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_records)
    inputs = rng.normal(size=(n_records, n_features)) + labels[:, None] * 0.8
    patients = [f"p{i // 2}" if i % 4 < 2 else f"q{i}" for i in range(n_records)]
    half = n_records // 2
    return AuditData(
        train_inputs=torch.tensor(inputs[:half], dtype=torch.float32),
        train_labels=torch.tensor(labels[:half]),
        holdout_inputs=torch.tensor(inputs[half:], dtype=torch.float32),
        holdout_labels=torch.tensor(labels[half:]),
        patient_ids=patients,
        columns={"site": ["A" if i % 3 else "B" for i in range(n_records)]},
    )


class FlakyFactory:
    """Builds `make_model` models, raising on the ``fail_at``-th call (an interruption)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self) -> nn.Module:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return make_model()
