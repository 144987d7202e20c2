"""The audit pool of a PyTorch model: what a data loader returns.

docs/statistics.md: the pool is the candidate's training records followed by held-out
(non-member) records of the same population, each in dataset order, with default record
ids ``train/<i>`` and ``holdout/<j>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from privacy_gate.errors import InputError, coerce_choice
from privacy_gate.records import RecordTable, records_from_columns
from privacy_gate.signals import Task
from privacy_gate.training.inputs import check_finite, check_labels, check_same_record_shape

__all__ = ["AuditData"]


@dataclass(frozen=True)
class AuditData:
    """Members (the candidate's training records) and held-out records, plus metadata
    aligned with the pool (members first, then held-out records).

    Attributes:
        train_inputs: ``(n_train, ...)`` features the candidate was trained on.
        train_labels: ``(n_train,)`` class indices, or ``(n_train, L)`` 0/1 targets.
        holdout_inputs: ``(n_holdout, ...)`` features of non-members.
        holdout_labels: labels of the non-members.
        task: binary, multiclass or multilabel.
        patient_ids: ``(n_train + n_holdout,)`` patient ids (None: each record is its own
            patient).
        columns: subgroup columns, each ``(n_train + n_holdout,)`` strings.
        record_ids: ``(n_train + n_holdout,)``; default ``train/<i>``, ``holdout/<j>``.
    """

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    holdout_inputs: torch.Tensor
    holdout_labels: torch.Tensor
    task: Task = Task.MULTICLASS
    patient_ids: Sequence[str | None] | None = None
    columns: Mapping[str, Sequence[str]] = field(default_factory=dict)
    record_ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "task", coerce_choice(Task, self.task, "task", "AuditData", InputError)
        )
        for name in ("train_inputs", "train_labels", "holdout_inputs", "holdout_labels"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise InputError(
                    f"AuditData.{name} must be a torch.Tensor. Got "
                    f"{type(getattr(self, name)).__name__} instead."
                )
        if len(self.train_inputs) != len(self.train_labels):
            raise InputError(
                f"AuditData has {len(self.train_inputs)} train inputs but "
                f"{len(self.train_labels)} train labels."
            )
        if len(self.holdout_inputs) != len(self.holdout_labels):
            raise InputError(
                f"AuditData has {len(self.holdout_inputs)} holdout inputs but "
                f"{len(self.holdout_labels)} holdout labels."
            )
        if len(self.train_inputs) == 0 or len(self.holdout_inputs) == 0:
            raise InputError(
                "AuditData needs at least one training and one held-out record "
                "(the pool needs members and non-members)."
            )
        self._check_values()
        n = self.n_records
        aligned = {
            "patient_ids": self.patient_ids,
            "record_ids": self.record_ids,
            **{f"columns[{k!r}]": v for k, v in self.columns.items()},
        }
        for name, values in aligned.items():
            if values is not None and len(values) != n:
                raise InputError(
                    f"AuditData.{name} has {len(values)} values but the pool has "
                    f"{n} records ({len(self.train_inputs)} train + "
                    f"{len(self.holdout_inputs)} holdout). HINT: metadata is "
                    "aligned with the train records followed by the holdout."
                )

    def _check_values(self) -> None:
        """Labels against the task, finite features, one record shape for both splits
        (`privacy_gate.training.inputs`): before any model trains."""
        for split in ("train", "holdout"):
            check_labels(getattr(self, f"{split}_labels"), self.task, f"AuditData.{split}_labels")
            check_finite(getattr(self, f"{split}_inputs"), f"AuditData.{split}_inputs")
        check_same_record_shape(
            self.train_inputs, self.holdout_inputs, "AuditData.train_inputs and holdout_inputs"
        )
        check_same_record_shape(
            self.train_labels,
            self.holdout_labels,
            "AuditData.train_labels and holdout_labels",
            dtype=False,
        )

    @property
    def n_records(self) -> int:
        return len(self.train_inputs) + len(self.holdout_inputs)

    def pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels of the whole pool, members first."""
        return (
            torch.cat([self.train_inputs, self.holdout_inputs]),
            torch.cat([self.train_labels, self.holdout_labels]),
        )

    def is_member(self) -> NDArray[np.bool_]:
        """``(n_records,)`` True for the candidate's training records."""
        members = np.zeros(self.n_records, dtype=bool)
        members[: len(self.train_inputs)] = True
        return members

    def record_table(self) -> RecordTable:
        """Record metadata for the numerical core."""
        ids = self.record_ids or [f"train/{i}" for i in range(len(self.train_inputs))] + [
            f"holdout/{j}" for j in range(len(self.holdout_inputs))
        ]
        return records_from_columns(ids, self.patient_ids, self.columns)
