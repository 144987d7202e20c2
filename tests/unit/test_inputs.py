"""Validation of the audit inputs: signals (arrays and signals.npz) and records.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privacy_gate.errors import InputError
from privacy_gate.pipeline import audit
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.records import (
    MISSING,
    RecordTable,
    is_missing,
    load_records,
    records_from_columns,
)
from privacy_gate.signals import Signals, Task, load_signals, make_signals

K, N = 4, 6


def _arrays(k: int = K, n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and masks with every record IN for exactly k/2 models."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((k, n), dtype=bool)
    for i in range(n):
        masks[rng.permutation(k)[: k // 2], i] = True
    return rng.standard_normal((k, n)), masks


def _target(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-1.0, 1.0, n), np.arange(n) % 2 == 0


# --- in-memory signals -----------------------------------------------------------------


def test_valid_signals() -> None:
    scores, masks = _arrays()
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
    scores, masks = _arrays()
    scores[2, 3] = bad
    with pytest.raises(InputError, match="NaN or infinite") as info:
        make_signals(scores, masks)
    assert "[2, 3]" in str(info.value)
    assert "'scores'" in str(info.value)


def test_shape_mismatch() -> None:
    scores, masks = _arrays()
    with pytest.raises(InputError, match="shape") as info:
        make_signals(scores, masks[:, :-1])
    assert "'masks'" in str(info.value)


def test_scores_must_be_two_dimensional() -> None:
    with pytest.raises(InputError, match="2-D"):
        make_signals(np.zeros(5), np.zeros(5, dtype=bool))


def test_integer_scores_are_rejected() -> None:
    scores, masks = _arrays()
    with pytest.raises(InputError, match="floats"):
        make_signals(scores.astype(np.int64), masks)


def test_integer_masks_are_rejected() -> None:
    scores, masks = _arrays()
    with pytest.raises(InputError, match="boolean") as info:
        make_signals(scores, masks.astype(np.int64))
    assert "astype(bool)" in str(info.value)


def test_record_never_in() -> None:
    scores, masks = _arrays()
    masks[:, 4] = False
    with pytest.raises(InputError, match="never IN") as info:
        make_signals(scores, masks)
    assert "record 4" in str(info.value)


def test_record_never_out() -> None:
    scores, masks = _arrays()
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
    scores, masks = _arrays()
    ts, tm = _target()
    kwargs: dict[str, Any] = {"target_scores": ts} if which == "target_scores" else {}
    if which == "target_members":
        kwargs["target_members"] = tm
    with pytest.raises(InputError, match="together"):
        make_signals(scores, masks, **kwargs)


@pytest.mark.parametrize("value", [True, False])
def test_target_members_all_one_class(value: bool) -> None:
    scores, masks = _arrays()
    ts, _ = _target()
    with pytest.raises(InputError, match="both members and non-members"):
        make_signals(scores, masks, target_scores=ts, target_members=np.full(N, value))


def test_target_scores_non_finite_and_wrong_shape() -> None:
    scores, masks = _arrays()
    ts, tm = _target()
    ts[5] = np.nan
    with pytest.raises(InputError, match="record 5"):
        make_signals(scores, masks, target_scores=ts, target_members=tm)
    with pytest.raises(InputError, match="'target_scores'"):
        make_signals(scores, masks, target_scores=np.zeros(N + 1), target_members=tm)


def test_target_members_must_be_boolean() -> None:
    scores, masks = _arrays()
    ts, tm = _target()
    with pytest.raises(InputError, match="'target_members'"):
        make_signals(scores, masks, target_scores=ts, target_members=tm.astype(np.int8))


def test_unknown_task() -> None:
    scores, masks = _arrays()
    with pytest.raises(InputError, match="'task'") as info:
        make_signals(scores, masks, task="regression")
    assert "multilabel" in str(info.value)


def test_input_errors_are_value_errors() -> None:
    scores, masks = _arrays()
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
    scores, masks = _arrays()
    ts, tm = _target()
    signals = make_signals(scores, masks, target_scores=ts, target_members=tm)
    _assert_read_only(signals)
    assert np.shares_memory(signals.scores, scores)
    # The caller's own arrays stay writable (a view was frozen, not the original).
    scores[0, 0] = 1.0
    assert scores.flags.writeable


def test_loaded_signals_are_read_only(tmp_path: Path) -> None:
    scores, masks = _arrays()
    ts, tm = _target()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks, target_scores=ts, target_members=tm)
    _assert_read_only(load_signals(path))


def test_directly_constructed_signals_are_read_only() -> None:
    """`Signals` is public and documents "Arrays are read-only views"."""
    scores, masks = _arrays()
    _assert_read_only(Signals(scores=scores, masks=masks))


# --- signals.npz -----------------------------------------------------------------------


def test_load_signals_round_trip(tmp_path: Path) -> None:
    scores, masks = _arrays()
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
    scores, masks = _arrays()
    path = tmp_path / "signals.npz"
    np.savez_compressed(path, scores=scores, masks=masks)
    signals = load_signals(path)
    assert not signals.has_target
    assert signals.task is Task.MULTICLASS


def test_unknown_npz_key(tmp_path: Path) -> None:
    scores, masks = _arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks, mask=masks)
    with pytest.raises(InputError, match="Unknown array") as info:
        load_signals(path)
    message = str(info.value)
    assert "'mask'" in message
    for key in ("scores", "masks", "target_scores", "target_members", "task"):
        assert repr(key) in message


def test_missing_masks_key(tmp_path: Path) -> None:
    scores, _ = _arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores)
    with pytest.raises(InputError, match="lacks") as info:
        load_signals(path)
    assert "'masks'" in str(info.value)


def test_int_masks_in_npz(tmp_path: Path) -> None:
    scores, masks = _arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks.astype(np.uint8))
    with pytest.raises(InputError, match="boolean"):
        load_signals(path)


def test_nan_scores_in_npz(tmp_path: Path) -> None:
    scores, masks = _arrays()
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
    scores, _ = _arrays()
    path = tmp_path / "signals.npy"
    np.save(path, scores)
    with pytest.raises(InputError) as info:
        load_signals(path)
    assert "signals.npy" in str(info.value)


def test_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    scores, masks = _arrays()
    path = tmp_path / "signals.npz"
    np.savez(path, scores=scores, masks=masks, task=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="Cannot read"):
        load_signals(path)


def test_missing_signals_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Cannot read the signals file"):
        load_signals(tmp_path / "absent.npz")


# --- records.csv -----------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "records.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_records(tmp_path: Path) -> None:
    path = _write(tmp_path, "record_id,patient_id,sex\nr0,p0,F\nr1,p0,M\nr2,p1,F\n")
    table = load_records(path)
    assert table.record_ids == ("r0", "r1", "r2")
    assert table.patient_ids == ("p0", "p0", "p1")
    assert dict(table.columns) == {"sex": ("F", "M", "F")}
    index, patients = table.patient_index()
    assert index.tolist() == [0, 0, 1]
    assert patients == [("patient", "p0"), ("patient", "p1")]


def test_missing_record_id_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "id,patient_id\nr0,p0\n")
    with pytest.raises(InputError, match="no 'record_id' column") as info:
        load_records(path)
    assert "'id'" in str(info.value)  # lists the columns found


def test_duplicate_record_ids_name_both_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "record_id,patient_id\nr0,p0\nr1,p1\nr0,p2\n")
    with pytest.raises(InputError, match="appears twice") as info:
        load_records(path)
    message = str(info.value)
    assert "'r0'" in message
    assert "rows 0 and 2" in message


def test_duplicate_record_ids_in_memory() -> None:
    with pytest.raises(InputError, match=r"'b'.*rows 1 and 3"):
        records_from_columns(["a", "b", "c", "b"])


def test_empty_record_id(tmp_path: Path) -> None:
    path = _write(tmp_path, "record_id,patient_id\nr0,p0\n ,p1\n")
    with pytest.raises(InputError, match="row 1 is empty"):
        load_records(path)


@pytest.mark.parametrize(
    "text", ["record_id,patient_id\nr0,p0\nr1\n", "record_id,patient_id\nr0,p0\nr1,p1,extra\n"]
)
def test_ragged_row(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match="Line 3") as info:
        load_records(path)
    assert "different number of fields" in str(info.value)


def test_repeated_column_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "record_id,sex,sex\nr0,F,F\n")
    with pytest.raises(InputError, match="repeats a column"):
        load_records(path)


def test_missing_records_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Cannot read the records file"):
        load_records(tmp_path / "absent.csv")


def test_records_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    path.write_bytes(b"record_id,site\nr0,\xff\xfe\xfa\n")
    with pytest.raises(InputError, match="UTF-8"):
        load_records(path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    path.write_bytes("record_id,patient_id\nr0,p0\n".encode("utf-8-sig"))
    assert load_records(path).record_ids == ("r0",)


def test_missing_patient_ids_make_own_patients(tmp_path: Path) -> None:
    path = _write(tmp_path, "record_id,patient_id\nr0,p0\nr1,\nr2,p0\nr3,NA\nr4,p1\n")
    table = load_records(path)
    assert table.patient_ids == ("p0", None, "p0", None, "p1")
    index, patients = table.patient_index()
    assert index.tolist() == [0, 1, 0, 2, 3]
    assert patients == [
        ("patient", "p0"),
        ("record", "r1"),
        ("record", "r3"),
        ("patient", "p1"),
    ]


def test_no_patient_column_means_one_patient_per_record(tmp_path: Path) -> None:
    table = load_records(_write(tmp_path, "record_id,site\nr0,a\nr1,b\n"))
    index, patients = table.patient_index()
    assert index.tolist() == [0, 1]
    assert patients == [("record", "r0"), ("record", "r1")]


def test_a_patient_id_equal_to_a_record_id_is_a_different_patient() -> None:
    table = records_from_columns(["x", "y"], ["y", None])
    index, patients = table.patient_index()
    assert index.tolist() == [0, 1]
    assert patients == [("patient", "y"), ("record", "y")]


def test_unknown_subgroup_column_lists_available_columns(tmp_path: Path) -> None:
    table = load_records(_write(tmp_path, "record_id,patient_id,sex,site\nr0,p0,F,a\n"))
    with pytest.raises(InputError, match="'race'") as info:
        table.subgroup_column("race")
    assert "['sex', 'site']" in str(info.value)


@pytest.mark.parametrize("word", ["", "NA", "unknown", "missing", " Unknown ", "N/A", "nan", "?"])
def test_missing_like_values_map_to_missing(word: str) -> None:
    assert is_missing(word)
    table = records_from_columns(["r0", "r1"], None, {"sex": ["F", word]})
    assert table.subgroup_column("sex") == ("F", MISSING)


def test_real_values_are_not_missing_and_are_stripped() -> None:
    table = records_from_columns(["r0", "r1", "r2"], None, {"sex": [" F ", "M", "0"]})
    assert table.subgroup_column("sex") == ("F", "M", "0")
    assert not is_missing("no")


def test_missing_values_from_csv(tmp_path: Path) -> None:
    path = _write(tmp_path, "record_id,sex\nr0,F\nr1,\nr2,NA\nr3,unknown\nr4,missing\nr5,M\n")
    table = load_records(path)
    assert table.subgroup_column("sex") == ("F", MISSING, MISSING, MISSING, MISSING, "M")


def test_record_table_columns_must_align() -> None:
    with pytest.raises(InputError, match="one value per record"):
        RecordTable(record_ids=("a", "b"), patient_ids=(None,))


# --- records vs signals (through the pipeline) -------------------------------------------


@pytest.mark.parametrize("n_rows", [N - 1, N + 1])
def test_row_count_differs_from_signals(n_rows: int) -> None:
    scores, masks = _arrays()
    records = records_from_columns([f"r{i}" for i in range(n_rows)])
    with pytest.raises(InputError) as info:
        audit(make_signals(scores, masks), records, pseudonymizer=Pseudonymizer(key=b"k"))
    message = str(info.value)
    assert f"{n_rows} rows" in message
    assert f"{N} records" in message


def test_unknown_subgroup_column_through_the_pipeline() -> None:
    from privacy_gate.config import parse_config

    scores, masks = _arrays()
    records = records_from_columns([f"r{i}" for i in range(N)], None, {"sex": ["F"] * N})
    config = parse_config({"subgroups": ["race"], "gate": {"max_patient_auc": 0.99}})
    with pytest.raises(InputError, match=r"'race'.*\['sex'\]"):
        audit(make_signals(scores, masks), records, config, pseudonymizer=Pseudonymizer(key=b"k"))
