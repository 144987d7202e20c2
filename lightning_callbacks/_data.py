"""The audit pool of a Lightning fit: members from the train loader, then the holdout.

docs/statistics.md: the pool is the candidate's training records followed by held-out
(non-member) records, each in dataset order. Records are ``(input, label)`` pairs, as a
``TensorDataset`` (or a ``Subset`` of one) yields them; any map-style dataset of such
pairs works.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lightning_callbacks._settings import OWNER, AuditSettings
from privacy_gate.errors import InputError
from privacy_gate.training.callback_args import pool_metadata
from privacy_gate.training.data import AuditData

__all__ = ["build_audit_data", "train_loader"]

_LOG = logging.getLogger("lightning_callbacks")


def dataset_tensors(dataset: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(n, ...)`` and labels ``(n, ...)`` of a map-style dataset of pairs."""
    if isinstance(dataset, DataLoader):
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, Subset):
        inputs, labels = dataset_tensors(dataset.dataset, name)
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return inputs[index], labels[index]
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__"):
        raise InputError(
            f"The {name} of the audit must be a map-style Dataset (with __len__). Got "
            f"{type(dataset).__name__} instead. HINT: use a TensorDataset of (inputs, labels)."
        )
    items = [dataset[i] for i in range(len(dataset))]
    if not items or not all(isinstance(item, tuple | list) and len(item) >= 2 for item in items):
        raise InputError(
            f"The {name} of the audit must yield (input, label) pairs. HINT: the audit "
            "scores logits against labels; wrap your data in a TensorDataset(inputs, labels)."
        )
    return (
        torch.stack([torch.as_tensor(item[0]) for item in items]),
        torch.stack([torch.as_tensor(item[1]) for item in items]),
    )


def train_loader(trainer: Any) -> DataLoader[Any]:
    """The DataLoader that ``fit`` trained on (one loader; combined loaders are refused)."""
    loader = trainer.train_dataloader
    if loader is None and trainer.datamodule is not None:
        loader = trainer.datamodule.train_dataloader()
    if not isinstance(loader, DataLoader):
        raise InputError(
            f"{OWNER} needs the one DataLoader that fit() trained on. Got "
            f"{type(loader).__name__} instead. HINT: combined or multiple train loaders "
            "are not supported; audit with privacy_gate.training.run_audit after fit()."
        )
    return loader


def _call_loader(datamodule: Any, hook: str) -> Any:
    try:
        return getattr(datamodule, hook)()
    except Exception:  # not implemented, or the split is not set up yet
        try:
            datamodule.setup("test" if hook == "test_dataloader" else "validate")
            return getattr(datamodule, hook)()
        except Exception:
            return None


def holdout_records(trainer: Any, settings: AuditSettings) -> Any:
    """The non-member records: the ``holdout`` argument, else the datamodule's test set,
    else its validation set (with a warning)."""
    if settings.holdout is not None:
        return settings.holdout
    datamodule = trainer.datamodule
    if datamodule is not None:
        test = _call_loader(datamodule, "test_dataloader")
        if test is not None:
            return test
    validation = trainer.val_dataloaders
    if validation is None and datamodule is not None:
        validation = _call_loader(datamodule, "val_dataloader")
    if validation is not None:
        warnings.warn(
            f"{OWNER} uses the validation set as the audit's held-out records. If it steered "
            "training (early stopping, model selection), the candidate is not independent "
            "of it. HINT: pass a dedicated holdout=... or give the datamodule a test set.",
            UserWarning,
            stacklevel=2,
        )
        return validation
    raise InputError(
        f"The 'holdout' parameter of {OWNER} must be given when the datamodule has neither "
        "a test nor a validation set. Got None instead. HINT: pass holdout=<Dataset or "
        "DataLoader of records the model never trained on>."
    )


def build_audit_data(trainer: Any, settings: AuditSettings) -> AuditData:
    """The audit pool of this fit, with patient ids and subgroup columns."""
    train_inputs, train_labels = dataset_tensors(train_loader(trainer).dataset, "train set")
    holdout_inputs, holdout_labels = dataset_tensors(holdout_records(trainer, settings), "holdout")
    n_train, n_holdout = len(train_inputs), len(holdout_inputs)
    patient_ids, columns = pool_metadata(
        settings.patient_ids, settings.subgroups, n_train, n_holdout, OWNER
    )
    _LOG.info("Audit pool: %d train records (members) + %d held-out records.", n_train, n_holdout)
    return AuditData(
        train_inputs=train_inputs.detach().cpu(),
        train_labels=train_labels.detach().cpu(),
        holdout_inputs=holdout_inputs.detach().cpu(),
        holdout_labels=holdout_labels.detach().cpu(),
        task=settings.task,
        patient_ids=patient_ids,
        columns=columns,
    )
