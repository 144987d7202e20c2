"""The record table: one row per record, in signal order.

``record_id`` (required, unique), ``patient_id`` (optional; a missing id makes the
record its own patient) and any other columns, usable as subgroups.
"""

from __future__ import annotations

import csv
import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from privacy_gate.errors import InputError

__all__ = ["MISSING", "RecordTable", "is_missing", "load_records"]

MISSING = "<missing>"
"""The group label of missing or unknown subgroup values (never tested)."""

_MISSING_WORDS = frozenset(
    {"", "na", "n/a", "nan", "none", "null", "missing", "unknown", "?", "<missing>"}
)


def is_missing(value: str | None) -> bool:
    """True for an empty, NA-like or "unknown" value.

    >>> [is_missing(v) for v in ["", "NaN", "Unknown", "F"]]
    [True, True, True, False]
    """
    return value is None or value.strip().lower() in _MISSING_WORDS


@dataclass(frozen=True)
class RecordTable:
    """Record metadata aligned with the signals.

    Attributes:
        record_ids: ``(n_records,)`` unique record ids.
        patient_ids: ``(n_records,)`` patient ids, None where missing.
        columns: other columns by name, each ``(n_records,)`` strings.
    """

    record_ids: tuple[str, ...]
    patient_ids: tuple[str | None, ...]
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.record_ids)
        if len(self.patient_ids) != n or any(len(c) != n for c in self.columns.values()):
            raise InputError("Every column of the record table must have one value per record.")
        try:
            if all(self.record_ids) and len(set(self.record_ids)) == n:
                return  # no empty and no repeated id; the loop below names the first one
        except TypeError:
            pass
        seen: dict[str, int] = {}
        for row, record_id in enumerate(self.record_ids):
            if not record_id:
                raise InputError(
                    f"The 'record_id' of row {row} is empty. HINT: every record needs a unique id."
                )
            if record_id in seen:
                raise InputError(
                    f"The 'record_id' {record_id!r} appears twice (rows "
                    f"{seen[record_id]} and {row}). HINT: record ids must be "
                    "unique."
                )
            seen[record_id] = row

    @property
    def n_records(self) -> int:
        return len(self.record_ids)

    def id_rank(self) -> NDArray[np.intp]:
        """``(n_records,)`` the rank of each record id in sorted order: a position that
        does not depend on the order the records come in."""
        rank = np.empty(self.n_records, dtype=np.intp)
        rank[np.argsort(np.asarray(self.record_ids, dtype=str), kind="stable")] = np.arange(
            self.n_records
        )
        return rank

    def patient_index(self) -> tuple[NDArray[np.intp], list[tuple[str, str]]]:
        """Map records to patients.

        Returns:
            ``(n_records,)`` patient index per record, and per patient a ``(kind, id)``
            pair where kind is "patient" or "record" (a record without a patient id).
        """
        # Patients are numbered in order of first appearance.
        if None not in self.patient_ids:
            number = {p: i for i, p in enumerate(dict.fromkeys(self.patient_ids))}
            index = np.fromiter(
                map(number.__getitem__, self.patient_ids), dtype=np.intp, count=self.n_records
            )
            return index, [("patient", p) for p in number if p is not None]
        keys = [
            ("record", record_id) if patient_id is None else ("patient", patient_id)
            for record_id, patient_id in zip(self.record_ids, self.patient_ids, strict=True)
        ]
        numbered = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        index = np.fromiter(map(numbered.__getitem__, keys), dtype=np.intp, count=self.n_records)
        return index, list(numbered)

    def subgroup_column(self, name: str) -> tuple[str, ...]:
        """A subgroup column with missing values mapped to `MISSING`."""
        if name not in self.columns:
            raise InputError(
                f"The subgroup column {name!r} is not in the record table. "
                f"Available columns: {sorted(self.columns)}. HINT: fix "
                "'subgroups' in the config or add the column to records.csv."
            )
        values = self.columns[name]
        distinct = _distinct_str(values)
        if distinct is None:
            return tuple(MISSING if is_missing(v) else v.strip() for v in values)
        # Few distinct values: map each once.
        mapped = {v: MISSING if is_missing(v) else v.strip() for v in distinct}
        return tuple(map(mapped.__getitem__, values))


def _distinct_str(values: Sequence[Any], *, none: bool = False) -> list[Any] | None:
    """The distinct values when each is exactly a `str` (or None, with ``none``), else None.

    A value equal to a `str` hashes with it and maps alike, so only the distinct values
    need their types checked.
    """
    try:
        distinct = list(dict.fromkeys(values))
    except TypeError:  # unhashable
        return None
    allowed = {str, type(None)} if none else {str}
    return distinct if set(map(type, distinct)) <= allowed else None


def records_from_columns(
    record_ids: Sequence[str],
    patient_ids: Sequence[str | None] | None = None,
    columns: Mapping[str, Sequence[str]] | None = None,
) -> RecordTable:
    """Build a `RecordTable` from Python sequences (missing patient ids: None or "")."""
    patients: Sequence[str | None]
    if patient_ids is None:
        patients = [None] * len(record_ids)
    elif (distinct := _distinct_str(patient_ids, none=True)) is not None:
        # Few distinct patients next to the records: normalise each id once.
        normal: dict[str | None, str | None] = {
            p: None if p is None or is_missing(p) else p for p in distinct
        }
        patients = list(map(normal.__getitem__, patient_ids))
    else:
        patients = [None if p is None or is_missing(str(p)) else str(p) for p in patient_ids]
    return RecordTable(
        record_ids=tuple(map(str, record_ids)),
        patient_ids=tuple(patients),
        columns={
            k: tuple(map(str, vs))
            if None not in vs
            else tuple("" if v is None else str(v) for v in vs)
            for k, vs in (columns or {}).items()
        },
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large, acyclic table is built (its
    full collections would scan every row again and again)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _check_header(header: list[str], path: Path) -> None:
    if "record_id" not in header:
        raise InputError(
            f"{path.name} has no 'record_id' column. Columns found: "
            f"{header}. HINT: the first row must be a header with "
            "record_id (and optionally patient_id)."
        )
    if len(set(header)) != len(header):
        raise InputError(f"{path.name} repeats a column name: {header}.")


def _ragged_row(path: Path, line: int, width: int) -> InputError:
    return InputError(
        f"Line {line} of {path.name} has a different number of fields than the header ({width})."
    )


def _read_columns(path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    """The header and the columns (exact strings) of ``records.csv``, validated."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle, _gc_paused():
            reader = csv.reader(handle)
            header = next(reader, [])
            _check_header(header, path)
            rows = [row for row in reader if row]  # blank lines are skipped
    except OSError as exc:
        raise InputError(f"Cannot read the records file {str(path)!r}: {exc.strerror}.") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"The records file {str(path)!r} is not a UTF-8 CSV: {exc}.") from None
    width = len(header)
    if set(map(len, rows)) - {width}:
        line = next(i for i, row in enumerate(rows, start=2) if len(row) != width)
        raise _ragged_row(path, line, width)
    with _gc_paused():
        columns: list[tuple[str, ...]] = (
            list(zip(*rows, strict=True)) if rows else [() for _ in header]
        )
    return header, columns


def load_records(path: str | Path) -> RecordTable:
    """Read ``records.csv`` (UTF-8, header row) and validate it."""
    path = Path(path)
    header, columns = _read_columns(path)
    column = dict(zip(header, columns, strict=True))
    # What records_from_columns does, for columns known to hold exact strings.
    patients: tuple[str | None, ...]
    if "patient_id" in header:
        normal = {p: None if is_missing(p) else p for p in dict.fromkeys(column["patient_id"])}
        patients = tuple(map(normal.__getitem__, column["patient_id"]))
    else:
        patients = (None,) * len(column["record_id"])
    return RecordTable(
        record_ids=tuple(v.strip() for v in column["record_id"]),
        patient_ids=patients,
        columns={c: column[c] for c in header if c not in ("record_id", "patient_id")},
    )
