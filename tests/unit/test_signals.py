"""Validation of the signals: in-memory arrays and signals.npz (`privacy_gate.signals`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from signal_arrays import K, N, balanced_arrays

from privacy_gate.errors import InputError
from privacy_gate.signals import Signals, Task, load_signals, make_signals


def _target(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-1.0, 1.0, n), np.arange(n) % 2 == 0


# --- in-memory signals -----------------------------------------------------------------


def test_valid_signals() -> None:
    scores, masks = balanced_arrays()
    ts, tm = _target()
    signals = make_signals(scores, masks, target_scores=ts, target_members=tm, task="binary")
    assert signals.n_reference_models == K
    assert signals.n_records == N
    assert signals.has_target
    assert signals.task is Task.BINARY
    np.testing.assert_array_equal(signals.scores, scores)
    np.testing.assert_array_equal(signals.masks, masks)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores(bad: float) -> None:
    scores, masks = balanced_arrays()
    scores[2, 3] = bad
    with pytest.raises(InputError, match="NaN or infinite") as info:
        make_signals(scores, masks)
    assert "[2, 3]" in str(info.value)
    assert "'scores'" in str(info.value)


def test_shape_mismatch() -> None:
    scores, masks = balanced_arrays()
    with pytest.raises(InputError, match="shape") as info:
        make_signals(scores, masks[:, :-1])
    assert "'masks'" in str(info.value)


def test_scores_must_be_two_dimensional() -> None:
    with pytest.raises(InputError, match="2-D"):
        make_signals(np.zeros(5), np.zeros(5, dtype=bool))


def test_integer_scores_are_rejected() -> None:
    scores, masks = balanced_arrays()
    with pytest.raises(InputError, match="floats"):
        make_signals(scores.astype(np.int64), masks)


def test_integer_masks_are_rejected() -> None:
    scores, masks = balanced_arrays()
    with pytest.raises(InputError, match="boolean") as info:
        make_signals(scores, masks.astype(np.int64))
    assert "astype(bool)" in str(info.value)


def test_record_never_in() -> None:
    scores, masks = balanced_arrays()
    masks[:, 4] = False
    with pytest.raises(InputError, match="never IN") as info:
        make_signals(scores, masks)
    assert "record 4" in str(info.value)


def test_record_never_out() -> None:
    scores, masks = balanced_arrays()
    masks[:, 1] = True
    with pytest.raises(InputError, match="never OUT") as info:
        make_signals(scores, masks)
    assert "record 1" in str(info.value)


def test_fewer_than_two_reference_models() -> None:
    scores = np.array([[0.1, 0.2, 0.3]])
    masks = np.array([[True, False, True]])
    with pytest.raises(InputError, match="At least 2 reference models") as info:
        make_signals(scores, masks)
    assert "Got 1" in str(info.value)


def test_fewer_than_two_records() -> None:
    with pytest.raises(InputError, match="At least 2 records"):
        make_signals(np.array([[0.1], [0.2]]), np.array([[True], [False]]))


@pytest.mark.parametrize("which", ["target_scores", "target_members"])
def test_target_arrays_come_together(which: str) -> None:
    scores, masks = balanced_arrays()
    ts, tm = _target()
    kwargs: dict[str, Any] = {"target_scores": ts} if which == "target_scores" else {}
    if which == "target_members":
        kwargs["target_members"] = tm
    with pytest.raises(InputError, match="together"):
        make_signals(scores, masks, **kwargs)


@pytest.mark.parametrize("value", [True, False])
def test_target_members_all_one_class(value: bool) -> None:
    scores, masks = balanced_arrays()
    ts, _ = _target()
    with pytest.raises(InputError, match="both members and non-members"):
        make_signals(scores, masks, target_scores=ts, target_members=np.full(N, value))


def test_target_scores_non_finite_and_wrong_shape() -> None:
    scores, masks = balanced_arrays()
    ts, tm = _target()
    ts[5] = np.nan
    with pytest.raises(InputError, match="record 5"):
        make_signals(scores, masks, target_scores=ts, target_members=tm)
    with pytest.raises(InputError, match="'target_scores'"):
        make_signals(scores, masks, target_scores=np.zeros(N + 1), target_members=tm)


def test_target_members_must_be_boolean() -> None:
    scores, masks = balanced_arrays()
    ts, tm = _target()
    with pytest.raises(InputError, match="'target_members'"):
        make_signals(scores, masks, target_scores=ts, target_members=tm.astype(np.int8))


def test_unknown_task() -> None:
    scores, masks = balanced_arrays()
    with pytest.raises(InputError, match="'task'") as info:
        make_signals(scores, masks, task="regression")
    assert "multilabel" in str(info.value)


def test_input_errors_are_value_errors() -> None:
    scores, masks = balanced_arrays()
    with pytest.raises(ValueError):
        make_signals(scores, masks.astype(int))


# --- read-only arrays ------------------------------------------------------------------


def _assert_read_only(signals: Signals) -> None:
    arrays = [signals.scores, signals.masks]
    if signals.target_scores is not None and signals.target_members is not None:
        arrays += [signals.target_scores, signals.target_members]
    for array in arrays:
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0, ...] = array[1, ...]


def test_make_signals_arrays_are_read_only_and_not_copies() -> None:
    scores, masks = balanced_arrays()
    ts, tm = _target()
    signals = make_signals(scores, masks, target_scores=ts, target_members=tm)
    _assert_read_only(signals)
    assert np.shares_memory(signals.scores, scores)
    # The caller's own arrays stay writable (a view was frozen, not the original).
    scores[0, 0] = 1.0
    assert scores.flags.writeable


def test_loaded_signals_are_read_only(tmp_path: Path) -> None:
    scores, masks = balanced_arrays()
    ts, tm = _target()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks, target_scores=ts, target_members=tm)
    _assert_read_only(load_signals(path))


def test_directly_constructed_signals_are_read_only() -> None:
    """`Signals` is public and documents "Arrays are read-only views"."""
    scores, masks = balanced_arrays()
    _assert_read_only(Signals(scores=scores, masks=masks))


# --- signals.npz -----------------------------------------------------------------------


def test_load_signals_round_trip(tmp_path: Path) -> None:
    scores, masks = balanced_arrays()
    ts, tm = _target()
    path = tmp_path / "signals.npz"
    np.savez(
        path, scores=scores, masks=masks, target_scores=ts, target_members=tm, task="multilabel"
    )
    signals = load_signals(path)
    np.testing.assert_array_equal(signals.scores, scores)
    np.testing.assert_array_equal(signals.masks, masks)
    np.testing.assert_array_equal(signals.target_scores, ts)
    np.testing.assert_array_equal(signals.target_members, tm)
    assert signals.task is Task.MULTILABEL


def test_load_signals_without_target(tmp_path: Path) -> None:
    scores, masks = balanced_arrays()
    path = tmp_path / "signals.npz"
    np.savez_compressed(path, scores=scores, masks=masks)
    signals = load_signals(path)
    assert not signals.has_target
    assert signals.task is Task.MULTICLASS


def test_unknown_npz_key(tmp_path: Path) -> None:
    scores, masks = balanced_arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks, mask=masks)
    with pytest.raises(InputError, match="Unknown array") as info:
        load_signals(path)
    message = str(info.value)
    assert "'mask'" in message
    for key in ("scores", "masks", "target_scores", "target_members", "task"):
        assert repr(key) in message


def test_missing_masks_key(tmp_path: Path) -> None:
    scores, _ = balanced_arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores)
    with pytest.raises(InputError, match="lacks") as info:
        load_signals(path)
    assert "'masks'" in str(info.value)


def test_int_masks_in_npz(tmp_path: Path) -> None:
    scores, masks = balanced_arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks.astype(np.uint8))
    with pytest.raises(InputError, match="boolean"):
        load_signals(path)


def test_nan_scores_in_npz(tmp_path: Path) -> None:
    scores, masks = balanced_arrays()
    scores[0, 0] = np.nan
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks)
    with pytest.raises(InputError, match="NaN"):
        load_signals(path)


def test_text_file_is_not_signals(tmp_path: Path) -> None:
    path = tmp_path / "signals.npz"
    path.write_text("record_id,score\na,1\n", encoding="utf-8")
    with pytest.raises(InputError, match="Cannot read the signals file") as info:
        load_signals(path)
    assert "signals.npz" in str(info.value)


def test_npy_file_is_not_signals(tmp_path: Path) -> None:
    """A plain .npy array (np.save instead of np.savez) is a likely user mistake."""
    scores, _ = balanced_arrays()
    path = tmp_path / "signals.npy"
    np.save(path, scores)
    with pytest.raises(InputError) as info:
        load_signals(path)
    assert "signals.npy" in str(info.value)


def test_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    scores, masks = balanced_arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks, task=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="Cannot read"):
        load_signals(path)


def test_missing_signals_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Cannot read the signals file"):
        load_signals(tmp_path / "absent.npz")
