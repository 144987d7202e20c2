"""MedMNIST's ``.npz`` files as an audit pool: bring your own (e.g. ``pathmnist.npz``
from medmnist.com; nothing is downloaded here).

A MedMNIST file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images`` and ``test_labels``: images ``uint8`` ``(N, H, W)`` (grey) or
``(N, H, W, C)``, labels ``(N, 1)`` class indices or ``(N, L)`` 0/1 multi-label targets
(ChestMNIST). The candidate's training split are the members; another split
(``test`` by default) is the held-out set. MedMNIST has no patient identifiers, so each
image is its own record and "patient".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from privacy_gate.errors import InputError
from privacy_gate.signals import Task
from privacy_gate.training.data import AuditData

__all__ = ["SPLITS", "load_medmnist"]

SPLITS = ("train", "val", "test")


def _images(archive: np.lib.npyio.NpzFile, split: str, path: Path) -> NDArray[np.float32]:
    key = f"{split}_images"
    images = archive[key]
    if images.dtype != np.uint8:
        raise InputError(f"{path}: '{key}' has dtype {images.dtype}, expected uint8 (0..255).")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    else:
        raise InputError(
            f"{path}: '{key}' has shape {images.shape}, expected (N, H, W) or (N, H, W, C)."
        )
    if len(images) == 0:
        raise InputError(f"{path}: '{key}' holds no images.")
    return np.ascontiguousarray(images, dtype=np.float32) / 255.0


def _labels(archive: np.lib.npyio.NpzFile, split: str, n: int, path: Path) -> NDArray[np.int64]:
    key = f"{split}_labels"
    labels = archive[key]
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or len(labels) != n:
        raise InputError(
            f"{path}: '{key}' has shape {labels.shape}, expected ({n}, 1) or ({n}, L) to "
            f"match {n} images in '{split}_images'."
        )
    if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise InputError(f"{path}: '{key}' must hold non-negative integers (got {labels.dtype}).")
    return labels.astype(np.int64)


def load_medmnist(path: str, holdout_split: str = "test", multilabel: bool = False) -> AuditData:
    """The pool of a MedMNIST file: ``train`` members, ``holdout_split`` non-members.

    Args:
        path: the ``.npz`` file.
        holdout_split: ``val`` or ``test``.
        multilabel: labels are ``(N, L)`` 0/1 targets (ChestMNIST), not class indices.
    """
    file = Path(path)
    if holdout_split not in SPLITS[1:]:
        raise InputError(f"data_args.holdout_split must be 'val' or 'test'. Got {holdout_split!r}.")
    if not file.is_file():
        raise InputError(f"data_args.path: no MedMNIST file at {file}.")
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{file} is not a readable .npz file: {error}") from None
    with archive:
        missing = [f"{s}_{kind}" for s in ("train", holdout_split) for kind in ("images", "labels")
                   if f"{s}_{kind}" not in archive.files]  # fmt: skip
        if missing:
            raise InputError(
                f"{file} lacks {missing} (it holds {sorted(archive.files)}). HINT: MedMNIST "
                "files hold train_/val_/test_images and _labels."
            )
        parts = {}
        for split in ("train", holdout_split):
            images = _images(archive, split, file)
            parts[split] = (images, _labels(archive, split, len(images), file))
    (train_x, train_y), (hold_x, hold_y) = parts["train"], parts[holdout_split]
    if train_x.shape[1:] != hold_x.shape[1:]:
        raise InputError(
            f"{file}: train images {train_x.shape[1:]} and {holdout_split} images "
            f"{hold_x.shape[1:]} differ in shape."
        )
    if multilabel:
        if not (np.isin(train_y, (0, 1)).all() and np.isin(hold_y, (0, 1)).all()):
            raise InputError(f"{file}: multilabel targets must be 0 or 1.")
        task, convert = Task.MULTILABEL, (lambda y: torch.from_numpy(y).float())
    else:
        if train_y.shape[1] != 1 or hold_y.shape[1] != 1:
            raise InputError(
                f"{file}: labels have {train_y.shape[1]} columns. HINT: set "
                "data_args.multilabel: true for multi-label files (ChestMNIST)."
            )
        task, convert = Task.MULTICLASS, (lambda y: torch.from_numpy(y[:, 0]))
    return AuditData(
        train_inputs=torch.from_numpy(train_x),
        train_labels=convert(train_y),
        holdout_inputs=torch.from_numpy(hold_x),
        holdout_labels=convert(hold_y),
        task=task,
    )
