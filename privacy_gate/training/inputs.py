"""Checks of the audit pool and the model, run before any model trains.

One place for every entry point (the CLI, `run_audit`, the Lightning callback, the MLflow
evaluator): a wrong label dtype, a label shape, a NaN feature or a model whose outputs do
not fit the task must stop the audit with the field named, not hours later inside a
training loop, and never by a cast that changes a value (``0.9`` truncated to ``0``).

What each task takes (the loss and the membership score are computed from these):

- ``multiclass``: labels ``(N,)`` of an integer dtype in ``[0, C)``; outputs ``(N, C)``;
- ``binary``: labels ``(N,)`` or ``(N, 1)`` with values exactly 0 or 1 (integer, bool or
  float dtype: a float 0./1. target is what the binary loss takes); outputs ``(N,)`` or
  ``(N, 1)``, one logit;
- ``multilabel``: labels ``(N, L)`` of 0/1 values; outputs ``(N, L)``.
"""

from __future__ import annotations

import torch
from torch import nn

from privacy_gate.errors import InputError
from privacy_gate.signals import Task
from privacy_gate.training.recipe import Loss

__all__ = [
    "check_finite",
    "check_labels",
    "check_model_outputs",
    "check_recipe_loss",
    "check_same_record_shape",
]

_PROBE_RECORDS = 2  # records of the pool one forward pass of the model checks


def _first_bad(mask: torch.Tensor) -> int:
    """The first record index (dimension 0) where ``mask`` is true anywhere."""
    rows = mask.reshape(len(mask), -1).any(dim=1)
    return int(torch.nonzero(rows)[0, 0])


def check_finite(values: torch.Tensor, field: str) -> None:
    """NaN or infinite features are refused with their count and first record: they would
    only show up as a reference model's NaN loss."""
    if not (values.is_floating_point() or values.is_complex()):
        return
    bad = ~torch.isfinite(values)
    count = int(bad.sum())
    if count:
        raise InputError(
            f"{field} holds {count} NaN or infinite value(s); the first is in record "
            f"{_first_bad(bad)}. HINT: impute or drop those records before the audit (the "
            "reference models train on exactly these inputs)."
        )


def check_labels(labels: torch.Tensor, task: Task, field: str) -> None:
    """Dtype, shape and values of the labels against the task (module docstring)."""
    shape = tuple(labels.shape)
    if labels.is_complex() or labels.ndim == 0:
        raise InputError(f"{field} must be a real tensor with one row per record. Got {shape}.")
    if task is Task.MULTICLASS:
        _multiclass_labels(labels, field)
    elif task is Task.BINARY:
        if labels.ndim > 2 or (labels.ndim == 2 and shape[1] != 1):
            raise InputError(
                f"{field} has shape {shape}, but task 'binary' takes one 0/1 label per record, "
                "shape (N,) or (N, 1). HINT: for one-hot or per-class targets use task "
                "'multiclass' with class indices, or 'multilabel'."
            )
        _zero_one(labels, field, "binary")
    else:
        if labels.ndim != 2:
            raise InputError(
                f"{field} has shape {shape}, but task 'multilabel' takes a (N, L) matrix of 0/1 "
                "targets. HINT: one column per label; for one label use task 'binary'."
            )
        _zero_one(labels, field, "multilabel")


def _multiclass_labels(labels: torch.Tensor, field: str) -> None:
    shape = tuple(labels.shape)
    if labels.ndim != 1:
        hint = "labels.squeeze(1)" if labels.ndim == 2 and shape[1] == 1 else "argmax of one-hot"
        raise InputError(
            f"{field} has shape {shape}, but task 'multiclass' takes one class index per record, "
            f"shape (N,). HINT: pass {hint}; for several 0/1 targets use task 'multilabel'."
        )
    if labels.is_floating_point() or labels.dtype is torch.bool:
        integral = bool(torch.all(torch.isfinite(labels) & (labels == torch.round(labels))))
        hint = (
            "convert them with labels.long() (every value is a whole number)"
            if integral
            else "class indices are whole numbers; soft or smoothed labels are not audited"
        )
        raise InputError(
            f"{field} has dtype {labels.dtype}, but task 'multiclass' takes integer class "
            f"indices (a float target means class probabilities to the loss). HINT: {hint}."
        )
    if len(labels) and int(labels.min()) < 0:
        index = int(torch.nonzero(labels < 0)[0, 0])
        raise InputError(
            f"{field} holds the negative class index {int(labels[index])} in record {index}. "
            "HINT: class indices run from 0 to C - 1 (an ignore index such as -100 is not "
            "audited: drop those records)."
        )


def _zero_one(labels: torch.Tensor, field: str, task: str) -> None:
    bad = (labels != 0) & (labels != 1)
    if bool(bad.any()):
        index = _first_bad(bad)
        example = labels[index].reshape(-1)[bad[index].reshape(-1)][0].item()
        raise InputError(
            f"{field} holds {int(bad.sum())} value(s) other than 0 and 1 (the first, "
            f"{example!r}, in record {index}), but task '{task}' takes 0/1 targets. HINT: "
            "threshold or re-encode the labels yourself; the audit never rounds them."
        )


def check_same_record_shape(
    first: torch.Tensor, second: torch.Tensor, fields: str, *, dtype: bool = True
) -> None:
    """Train and holdout records must have one shape (they form one pool); inputs also one
    dtype (concatenating would promote one split's values)."""
    if tuple(first.shape[1:]) != tuple(second.shape[1:]) or (dtype and first.dtype != second.dtype):
        raise InputError(
            f"{fields} differ: {tuple(first.shape[1:])} {first.dtype} against "
            f"{tuple(second.shape[1:])} {second.dtype} per record. HINT: both splits must be "
            "encoded the same way (same features, same dtype)."
        )


def check_model_outputs(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, task: Task, owner: str
) -> None:
    """One forward pass of ``model`` (eval mode, no gradients, the caller's RNG kept) on the
    pool's first records: its outputs must fit the task and the labels."""
    n = min(_PROBE_RECORDS, len(inputs))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            outputs = model(inputs[:n].to(device))
    except Exception as exc:
        raise InputError(
            f"{owner} cannot run on the pool's inputs (shape {tuple(inputs.shape[1:])} per "
            f"record): {type(exc).__name__}: {exc}. HINT: the data loader's inputs must be "
            "what the model's forward takes."
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(outputs, torch.Tensor):
        raise InputError(
            f"{owner} returns {type(outputs).__name__} from forward; the audit needs one "
            "tensor of logits. HINT: wrap the model so that forward returns the logits "
            "(e.g. outputs.logits)."
        )
    _outputs_fit_task(tuple(outputs.shape), n, labels, task, owner)


def _outputs_fit_task(
    shape: tuple[int, ...], n: int, labels: torch.Tensor, task: Task, owner: str
) -> None:
    got = f"{owner} returns outputs of shape {shape} for {n} records"
    if not shape or shape[0] != n:
        raise InputError(f"{got}: the first dimension must be the records. HINT: return (N, ...).")
    if task is Task.MULTICLASS:
        if len(shape) != 2 or shape[1] < 2:
            raise InputError(
                f"{got}, but task 'multiclass' needs logits (N, C) with C >= 2. HINT: a model "
                "with one logit is task 'binary'."
            )
        top = int(labels.max()) if len(labels) else 0
        if top >= shape[1]:
            raise InputError(
                f"{got}: {shape[1]} classes, but the labels hold class index {top}. HINT: "
                "the model's last layer needs one output per class (max label + 1)."
            )
    elif task is Task.BINARY:
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise InputError(
                f"{got}, but task 'binary' needs one logit per record, (N,) or (N, 1). HINT: a "
                "model with one logit per class is task 'multiclass' with class indices."
            )
    elif len(shape) != 2 or shape[1] != labels.shape[1]:
        raise InputError(
            f"{got}, but task 'multilabel' needs (N, L) logits with L = {labels.shape[1]}, one "
            "per label column."
        )


def check_recipe_loss(loss: Loss, task: Task) -> None:
    """The recipe's loss must be the task's: cross-entropy over class indices for
    ``multiclass``, binary cross-entropy for ``binary`` and ``multilabel``."""
    expected = Loss.CROSS_ENTROPY if task is Task.MULTICLASS else Loss.BINARY_CROSS_ENTROPY
    if loss is not expected:
        raise InputError(
            f"The 'loss' parameter of recipe must be {expected.value!r} for task "
            f"{task.value!r}. Got {loss.value!r} instead. HINT: set recipe.loss: "
            f"{expected.value}, or the task that matches the model's outputs."
        )
