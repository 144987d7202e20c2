"""Validation of records.csv and the record table (`privacy_gate.records`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from privacy_gate.errors import InputError
from privacy_gate.records import (
    MISSING,
    RecordTable,
    is_missing,
    load_records,
    records_from_columns,
)

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
