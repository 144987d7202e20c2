"""The benchmarks' data: the EHR example's SUPPORT2 audit pool, or synthetic data of its
shape when SurvSet is not installed (one loader for every benchmark)."""

from __future__ import annotations

import torch

from privacy_gate.signals import Task
from privacy_gate.training.data import AuditData

N_RECORDS = 9105
N_FEATURES = 78


def load_ehr_pool(kind: str = "auto") -> tuple[AuditData, str]:
    """``kind``: "auto" (SUPPORT2 if available), "ehr" (SUPPORT2 or fail) or "synthetic"."""
    if kind in ("auto", "ehr"):
        try:
            from examples.ehr.data import load_support2

            return load_support2(seed=0), "SUPPORT2 (examples.ehr)"
        except ImportError:
            if kind == "ehr":
                raise
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(N_RECORDS, N_FEATURES, generator=generator)
    weights = torch.randn(N_FEATURES, generator=generator)
    labels = (inputs @ weights + torch.randn(N_RECORDS, generator=generator) > 0).long()
    half = N_RECORDS // 2
    data = AuditData(inputs[:half], labels[:half], inputs[half:], labels[half:],
                     task=Task.MULTICLASS)  # fmt: skip
    return data, "synthetic"
