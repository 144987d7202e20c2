"""The record table: one row per record, in signal order.

``record_id`` (required, unique), ``patient_id`` (optional; a missing id makes the
record its own patient) and any other columns, usable as subgroups.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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

    def patient_index(self) -> tuple[NDArray[np.intp], list[tuple[str, str]]]:
        """Map records to patients.

        Returns:
            ``(n_records,)`` patient index per record, and per patient a ``(kind, id)``
            pair where kind is "patient" or "record" (a record without a patient id).
        """
        index = np.empty(self.n_records, dtype=np.intp)
        keys: dict[tuple[str, str], int] = {}
        for row, (record_id, patient_id) in enumerate(
            zip(self.record_ids, self.patient_ids, strict=True)
        ):
            key = ("record", record_id) if patient_id is None else ("patient", patient_id)
            index[row] = keys.setdefault(key, len(keys))
        return index, list(keys)

    def subgroup_column(self, name: str) -> tuple[str, ...]:
        """A subgroup column with missing values mapped to `MISSING`."""
        if name not in self.columns:
            raise InputError(
                f"The subgroup column {name!r} is not in the record table. "
                f"Available columns: {sorted(self.columns)}. HINT: fix "
                "'subgroups' in the config or add the column to records.csv."
            )
        return tuple(MISSING if is_missing(v) else v.strip() for v in self.columns[name])


def records_from_columns(
    record_ids: Sequence[str],
    patient_ids: Sequence[str | None] | None = None,
    columns: Mapping[str, Sequence[str]] | None = None,
) -> RecordTable:
    """Build a `RecordTable` from Python sequences (missing patient ids: None or "")."""
    patients = (
        [None] * len(record_ids)
        if patient_ids is None
        else [None if p is None or is_missing(str(p)) else str(p) for p in patient_ids]
    )
    return RecordTable(
        record_ids=tuple(str(r) for r in record_ids),
        patient_ids=tuple(patients),
        columns={
            k: tuple("" if v is None else str(v) for v in vs) for k, vs in (columns or {}).items()
        },
    )


def load_records(path: str | Path) -> RecordTable:
    """Read ``records.csv`` (UTF-8, header row) and validate it."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if "record_id" not in header:
                raise InputError(
                    f"{path.name} has no 'record_id' column. Columns found: "
                    f"{header}. HINT: the first row must be a header with "
                    "record_id (and optionally patient_id)."
                )
            if len(set(header)) != len(header):
                raise InputError(f"{path.name} repeats a column name: {header}.")
            rows = list(reader)
    except OSError as exc:
        raise InputError(f"Cannot read the records file {str(path)!r}: {exc.strerror}.") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"The records file {str(path)!r} is not a UTF-8 CSV: {exc}.") from None
    for line, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise InputError(
                f"Line {line} of {path.name} has a different number of fields "
                f"than the header ({len(header)})."
            )
    others = [c for c in header if c not in ("record_id", "patient_id")]
    return records_from_columns(
        [row["record_id"].strip() for row in rows],
        [row["patient_id"] for row in rows] if "patient_id" in header else None,
        {name: [row[name] for row in rows] for name in others},
    )
