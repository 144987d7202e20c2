"""Audit pools and models with one defect each (an audit.yaml target for the input-check
tests): each must stop the audit with exit 2, the field named, before any model trains."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from privacy_gate.training.data import AuditData

#: defect -> a substring the error must contain (the field, the shape or the value named).
DEFECTS: dict[str, str] = {
    "fractional_float_labels": "AuditData.train_labels has dtype torch.float32",
    "integral_float_labels": "labels.long()",
    "column_vector_labels": "AuditData.train_labels has shape",
    "negative_label": "negative class index -1",
    "binary_label_two": "value(s) other than 0 and 1",
    "binary_soft_label": "value(s) other than 0 and 1",
    "multilabel_vector": "task 'multilabel' takes a (N, L) matrix",
    "nan_feature": "AuditData.holdout_inputs holds 1 NaN or infinite value(s)",
    "inf_feature": "AuditData.train_inputs holds",
    "patient_ids_short": "AuditData.patient_ids has",
    "column_short": "AuditData.columns['site'] has",
    "holdout_features": "AuditData.train_inputs and holdout_inputs differ",
    "one_logit_multiclass": "task 'multiclass' needs logits (N, C)",
    "two_logits_binary": "task 'binary' needs one logit per record",
    "too_few_classes": "the labels hold class index 2",
    "loss_mismatch": "'loss' parameter of recipe must be 'binary_cross_entropy'",
    "forward_mismatch": "cannot run on the pool's inputs",
}


def make_model(n_features: int = 6, outputs: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, outputs))


def load(defect: str, seed: int = 0, n_records: int = 40) -> AuditData:
    """A small valid pool, then ``defect`` applied to it."""
    rng = np.random.default_rng(seed)
    half = n_records // 2
    x = torch.tensor(rng.normal(size=(n_records, 6)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 2, n_records))
    task = "multiclass"
    patients: list[str | None] = [f"p{i}" for i in range(n_records)]
    columns = {"site": ["A" if i % 2 else "B" for i in range(n_records)]}
    x_train, x_hold, y_train, y_hold = x[:half], x[half:], y[:half], y[half:]
    row = int(rng.integers(0, half))
    if defect == "fractional_float_labels":
        y_train = y_train.float() * 0.9
    elif defect == "integral_float_labels":
        y_train = y_train.float()
    elif defect == "column_vector_labels":
        y_train, y_hold = y_train[:, None], y_hold[:, None]
    elif defect == "negative_label":
        y_train = y_train.clone()
        y_train[row] = -1
    elif defect in ("binary_label_two", "binary_soft_label"):
        task = "binary"
        y_train = y_train.float()
        y_train[row] = 2.0 if defect == "binary_label_two" else 0.5
    elif defect == "multilabel_vector":
        task = "multilabel"
    elif defect == "nan_feature":
        x_hold = x_hold.clone()
        x_hold[row, int(rng.integers(0, 6))] = float("nan")
    elif defect == "inf_feature":
        x_train = x_train.clone()
        x_train[row, 0] = float("inf")
    elif defect == "patient_ids_short":
        patients = patients[:-1]
    elif defect == "column_short":
        columns = {"site": columns["site"][1:]}
    elif defect == "holdout_features":
        x_hold = x_hold[:, :5]
    elif defect in ("two_logits_binary", "loss_mismatch"):
        task = "binary"
    elif defect == "too_few_classes":
        y_train = y_train.clone()
        y_train[row] = 2
    return AuditData(
        x_train, y_train, x_hold, y_hold, task=task, patient_ids=patients, columns=columns
    )
