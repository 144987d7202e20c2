"""Reference-model signals: the input of the numerical core.

``scores[k, i]`` is the membership score (logit-scaled confidence in the true label) of
record ``i`` under reference model ``k``; ``masks[k, i]`` says whether record ``i`` was in
model ``k``'s training data. Optional target signals describe the release candidate.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from privacy_gate.errors import InputError, check_known_keys
from privacy_gate.npz import read_stored_npz

__all__ = ["Signals", "Task", "load_signals"]

_NPZ_KEYS = ("scores", "masks", "target_scores", "target_members", "task")


class Task(str, Enum):
    """The classification task; RMIA assumes one label per record."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"


@dataclass(frozen=True)
class Signals:
    """Validated signals. Arrays are read-only views; the core never writes into them.

    Attributes:
        scores: ``(n_reference_models, n_records)`` float membership scores.
        masks: ``(n_reference_models, n_records)`` bool, record IN model k's training data.
        target_scores: ``(n_records,)`` scores under the release candidate, or None.
        target_members: ``(n_records,)`` bool, record in the candidate's training data.
        task: the classification task (RMIA runs only for single-label tasks).
    """

    scores: NDArray[np.floating[Any]]
    masks: NDArray[np.bool_]
    target_scores: NDArray[np.floating[Any]] | None = None
    target_members: NDArray[np.bool_] | None = None
    task: Task = Task.MULTICLASS

    def __post_init__(self) -> None:
        validate_signals(self)
        for name in ("scores", "masks", "target_scores", "target_members"):
            array = getattr(self, name)
            if array is not None and array.flags.writeable:
                object.__setattr__(self, name, _as_readonly(array))

    @property
    def n_reference_models(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_records(self) -> int:
        return int(self.scores.shape[1])

    @property
    def has_target(self) -> bool:
        return self.target_scores is not None


def _first_bad_index(bad: NDArray[np.bool_]) -> str:
    where = np.argwhere(bad)[0]
    return ", ".join(str(int(i)) for i in where)


def validate_signals(signals: Signals) -> None:
    """Raise `InputError` naming the field and the fix for anything the core cannot use."""
    scores, masks = signals.scores, signals.masks
    if not isinstance(scores, np.ndarray) or scores.ndim != 2:
        raise InputError(
            "The 'scores' array must be 2-D (n_reference_models, n_records). "
            f"Got shape {np.shape(scores)} instead."
        )
    if not np.issubdtype(scores.dtype, np.floating):
        raise InputError(
            f"The 'scores' array must hold floats. Got dtype {scores.dtype} "
            "instead. HINT: scores are logit-scaled confidences."
        )
    if not isinstance(masks, np.ndarray) or masks.dtype != np.bool_:
        raise InputError(
            f"The 'masks' array must be boolean. Got dtype {getattr(masks, 'dtype', None)} "
            "instead. HINT: store masks.astype(bool) (True = record in the model's training "
            "data)."
        )
    if masks.shape != scores.shape:
        raise InputError(
            f"The 'masks' array must have the shape of 'scores' {scores.shape}. "
            f"Got {masks.shape} instead."
        )
    n_models, n_records = scores.shape
    if n_models < 2:
        raise InputError(
            f"At least 2 reference models are needed. Got {n_models} instead. "
            "HINT: 64 is the default; see the noise floor in docs/statistics.md."
        )
    if n_records < 2:
        raise InputError(f"At least 2 records are needed. Got {n_records} instead.")
    # min and max are NaN or infinite exactly when some score is (10x faster than isfinite).
    if not (np.isfinite(scores.min()) and np.isfinite(scores.max())):
        finite = np.isfinite(scores)
        raise InputError(
            f"The 'scores' array holds {int((~finite).sum())} NaN or infinite values "
            f"(first at [model, record] = [{_first_bad_index(~finite)}]). HINT: compute "
            "scores stably from logits (log-softmax) and drop failed models."
        )
    n_in = masks.sum(axis=0)
    never_in = n_in == 0
    never_out = n_in == n_models
    for bad, word in ((never_in, "IN"), (never_out, "OUT")):
        if bad.any():
            raise InputError(
                f"{int(bad.sum())} record(s) are never {word} a reference model's training "
                f"data (first: record {int(np.argmax(bad))}), so their risk cannot be "
                "estimated. HINT: draw the reference subsets so that every record is IN "
                "for half of the models."
            )
    _validate_target(signals, n_records)


def _validate_target(signals: Signals, n_records: int) -> None:
    target_scores, target_members = signals.target_scores, signals.target_members
    if (target_scores is None) != (target_members is None):
        raise InputError(
            "'target_scores' and 'target_members' must be given together. "
            "HINT: both describe the release candidate."
        )
    if target_scores is None or target_members is None:
        return
    if target_scores.shape != (n_records,) or not np.issubdtype(target_scores.dtype, np.floating):
        raise InputError(
            f"The 'target_scores' array must be float with shape ({n_records},)."
            f" Got {target_scores.dtype} {target_scores.shape} instead."
        )
    if not np.isfinite(target_scores).all():
        bad = ~np.isfinite(target_scores)
        raise InputError(
            f"The 'target_scores' array holds {int(bad.sum())} NaN or infinite "
            f"values (first at record {int(np.argmax(bad))})."
        )
    if target_members.dtype != np.bool_ or target_members.shape != (n_records,):
        raise InputError(
            f"The 'target_members' array must be boolean with shape "
            f"({n_records},). Got {target_members.dtype} {target_members.shape}"
            " instead. HINT: store target_members.astype(bool)."
        )
    n_members = int(target_members.sum())
    if n_members == 0 or n_members == n_records:
        raise InputError(
            "'target_members' must mark both members and non-members of the "
            f"release candidate. Got {n_members} members of {n_records}."
        )


def _as_readonly(array: NDArray[np.generic]) -> NDArray[np.generic]:
    view = array.view()
    view.flags.writeable = False
    return view


def make_signals(
    scores: NDArray[np.floating] | list[list[float]],
    masks: NDArray[np.bool_] | list[list[bool]],
    *,
    target_scores: NDArray[np.floating] | None = None,
    target_members: NDArray[np.bool_] | None = None,
    task: Task | str = Task.MULTICLASS,
) -> Signals:
    """Build validated `Signals` from arrays (read-only views, no copies).

    >>> s = make_signals([[1.0, 2.0], [0.5, 1.0]], np.array([[True, False], [False, True]]))
    >>> s.n_reference_models, s.n_records
    (2, 2)
    """
    scores_array = np.asarray(scores)  # float32 stays float32: the core upcasts per chunk
    target = None if target_scores is None else np.asarray(target_scores)
    try:
        task_value = Task(task)
    except ValueError:
        raise InputError(
            f"The 'task' of the signals must be one of {[t.value for t in Task]}."
            f" Got {task!r} instead."
        ) from None
    return Signals(
        scores=_as_readonly(scores_array),  # type: ignore[arg-type]
        masks=_as_readonly(np.asarray(masks)),  # type: ignore[arg-type]
        target_scores=None if target is None else _as_readonly(target),  # type: ignore[arg-type]
        target_members=None if target_members is None else _as_readonly(np.asarray(target_members)),  # type: ignore[arg-type]
        task=task_value,
    )


def _check_npz_keys(files: list[str], path: Path) -> None:
    check_known_keys(
        files, _NPZ_KEYS, path.name, hint="check the spelling.", error=InputError, what="array"
    )
    missing = [k for k in ("scores", "masks") if k not in files]
    if missing:
        raise InputError(
            f"{path.name} lacks the required array(s) {missing}. "
            "HINT: np.savez(path, scores=..., masks=...)."
        )


def load_signals(path: str | Path) -> Signals:
    """Read ``signals.npz`` (keys: scores, masks, optional target_scores, target_members,
    task) without pickle, and validate it."""
    path = Path(path)
    fast = read_stored_npz(path)
    if fast is not None:
        _check_npz_keys(list(fast), path)
        arrays = fast
    else:
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise InputError(
                    f"{path.name} holds a single array, not named signals. HINT: write "
                    "np.savez(path, scores=..., masks=...)."
                )
            with loaded as npz:
                _check_npz_keys(npz.files, path)
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(
                f"Cannot read the signals file {str(path)!r}: {exc}. HINT: write it "
                "with numpy.savez and no object arrays."
            ) from None
    task = arrays.get("task")
    return make_signals(
        arrays["scores"],
        arrays["masks"],
        target_scores=arrays.get("target_scores"),
        target_members=arrays.get("target_members"),
        task=str(task.item()) if task is not None else Task.MULTICLASS,
    )
