"""SUPPORT2 as a LightningDataModule: train = the audit's members, test = its holdout.

The split, preprocessing, patient ids and subgroup columns all come from
``examples.ehr.data.load_support2`` (one `AuditData`), so the callback's pool (train set,
then test set) lines up with ``patient_ids`` and ``subgroups`` below.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset

from examples.ehr.data import load_support2
from privacy_gate.training.data import AuditData

__all__ = ["SupportData"]


class SupportData(pl.LightningDataModule):
    """SUPPORT2 split by patient (seeded): half the patients train, half are held out."""

    def __init__(self, *, seed: int = 0, batch_size: int = 128) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.audit_data: AuditData = load_support2(seed=seed)
        data = self.audit_data
        self.train_set = TensorDataset(data.train_inputs, data.train_labels)
        self.test_set = TensorDataset(data.holdout_inputs, data.holdout_labels)

    @property
    def patient_ids(self) -> list[str | None]:
        """Aligned with the pool: train records, then test records."""
        return list(self.audit_data.patient_ids or [])

    @property
    def subgroups(self) -> dict[str, list[str]]:
        """``race``, ``sex``, ``income``, ``age_band``, aligned with the pool."""
        return {name: list(values) for name, values in self.audit_data.columns.items()}

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.test_set, batch_size=1024)
