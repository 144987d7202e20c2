"""The report: JSON-safe figures of an audit, and the files written beside it.

``report.json`` holds the figures (never raw ids unless asked for); ``records.csv`` and
``patients.csv`` hold the per-record and per-patient figures under pseudonyms.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from privacy_gate.errors import OutdatedReportError, ReportError
from privacy_gate.report_model import AuditReport

__all__ = [
    "REPORT_FILE",
    "SCHEMA_VERSION",
    "canonical_json",
    "file_sha256",
    "load_audit_report",
    "load_report",
    "non_finite_field",
    "outdated_schema_reason",
    "parse_report_json",
    "read_audit_report",
    "write_json",
    "write_table",
]

SCHEMA_VERSION = "2.4"
REPORT_FILE = "report.json"
_REQUIRED_SECTIONS = ("schema_version", "audit", "summary", "subgroups", "decision")


_STALE_MAJOR = "1"
"""Reports of this schema major are older audits: stale, a gate failure, not an error."""


def _major(report: Mapping[str, Any]) -> str:
    return str(report.get("schema_version", "")).split(".")[0]


def outdated_schema_reason(report: Mapping[str, Any]) -> str | None:
    """Why a report's figures cannot be re-checked by this version, or None.

    Schema 1 reports tested "at risk" with the SE at the estimate (anti-conservative near
    AUC 1), took the subgroup tail over records and carried the ``max_tail_se`` rule:
    their figures do not answer the current rules, so they need a new audit (a stale
    audit fails the gate; it is never re-read as if it meant the same).
    """
    version = str(report.get("schema_version", ""))
    major = _major(report)
    if major == SCHEMA_VERSION.split(".")[0]:
        return None
    if major == _STALE_MAJOR:
        return (
            f"the audit was written with report schema {version} by an older privacy-gate, "
            "whose at-risk test (SE at the estimate), record-level subgroup tail and "
            "max_tail_se rule this version replaced, so its figures cannot be re-checked. "
            "HINT: run a new audit with this version"
        )
    return (
        f"the report's schema_version {version!r} is not supported (this version reads "
        f"{SCHEMA_VERSION}). HINT: run a new audit with this version of privacy-gate"
    )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    """Plain Python types for JSON; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def canonical_json(report: Mapping[str, Any], *, exclude: Sequence[str] = ("signature",)) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes that are hashed and signed."""
    body = {k: v for k, v in report.items() if k not in exclude}
    return json.dumps(
        _json_safe(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def write_json(report: Mapping[str, Any], path: Path) -> None:
    """Write the report as indented JSON, atomically."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(
        json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    temporary.replace(path)


_NEEDS_QUOTES = (",", '"', "\r", "\n")
_BLOCK_ROWS = 1 << 14


def _column_source(column: Sequence[Any] | NDArray[Any]) -> list[str] | NDArray[Any]:
    """A column as its list of strings (when it is one already) or as a NumPy array."""
    if (
        isinstance(column, (list, tuple))
        and set(map(type, column)) <= {str}
        and "\0" not in "".join(column)  # NumPy would drop trailing NULs
    ):
        return list(column)  # what np.asarray(column).tolist() gives, without the copy
    return np.asarray(column)


def _cells(source: list[str] | NDArray[Any], rows: slice) -> list[str]:
    """The CSV text of some rows of a column: floats as ``repr``, anything else as ``str``."""
    if isinstance(source, list):
        return source[rows]
    if np.issubdtype(source.dtype, np.floating):
        values = source[rows].astype(np.float64).tolist()
        # repr of a list formats every float with repr, in C; ", " never occurs in one.
        return repr(values)[1:-1].split(", ") if values else []
    return [str(v) for v in source[rows].tolist()]


def write_table(
    path: Path, header: Sequence[str], columns: Sequence[Sequence[Any] | NDArray[Any]]
) -> None:
    """Write columns (equal lengths) as CSV; floats with 17 significant digits."""
    sources = [_column_source(c) for c in columns]
    lengths = [len(c) for c in sources]
    if len(set(lengths)) > 1:
        list(zip(*map(range, lengths), strict=True))  # the error zip(strict=True) raises
    n_rows = lengths[0] if lengths else 0
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        # Row blocks keep memory small; rows are independent, so the text is the same.
        for start in range(0, n_rows, _BLOCK_ROWS):
            rows = slice(start, start + _BLOCK_ROWS)
            cells = [_cells(source, rows) for source in sources]
            text = "\x1f".join(
                "\x1f".join(c)
                for c, source in zip(cells, sources, strict=True)
                if not isinstance(source, np.ndarray) or source.dtype.kind not in "fiub"
            )
            if len(cells) > 1 and not any(mark in text for mark in _NEEDS_QUOTES):
                # No cell needs quoting: the csv module would write exactly these lines.
                handle.write("\r\n".join(map(",".join, zip(*cells, strict=True))) + "\r\n")
            else:
                writer.writerows(zip(*cells, strict=True))
    temporary.replace(path)


def _non_finite(constant: str) -> Any:
    raise ValueError(
        f"the report holds the non-finite number {constant}; reports write a figure that is "
        "not finite as null, so this one was not written by privacy-gate or was edited"
    )


MAX_REPORT_DEPTH = 64
"""Deepest nesting of objects and arrays a report may have (privacy-gate writes < 10)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(
            f"the report holds the number {text[:40]}, which overflows to infinity; reports "
            "hold finite numbers only, so this one was not written by privacy-gate or was edited"
        )
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(
                f"the report names the key {key[:60]!r} twice in one object; a reader would "
                "see only one of the two values, so the report is refused"
            )
        seen[key] = value
    return seen


def _depth(value: Any) -> int:
    """The nesting depth of parsed JSON (iterative: a hostile report cannot recurse)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level > MAX_REPORT_DEPTH:
                return level
            stack.extend((child, level + 1) for child in item)
    return deepest


def parse_report_json(text: str) -> Any:
    """Strict ``json.loads``, so that a report has one meaning (the signed bytes say what
    the gate reads). Refused with ``ValueError``: ``NaN`` and ``Infinity`` (a NaN figure
    compares False with every limit and would pass the gate; privacy-gate writes null),
    numbers that overflow to infinity (``1e400``), duplicate keys, and nesting deeper than
    `MAX_REPORT_DEPTH`."""
    try:
        data = json.loads(
            text,
            parse_constant=_non_finite,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except RecursionError:
        raise ValueError(
            f"the report is nested too deeply (more than {MAX_REPORT_DEPTH} levels)"
        ) from None
    if _depth(data) > MAX_REPORT_DEPTH:
        raise ValueError(f"the report is nested too deeply (more than {MAX_REPORT_DEPTH} levels)")
    return data


def non_finite_field(value: Any, path: str = "") -> str | None:
    """The first field holding a non-finite number (NaN, Infinity), or None: canonical
    JSON writes those as null, so a signature over them would have two meanings."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "(the report)"
        if isinstance(item, Mapping):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report.json and check its schema version and sections."""
    path = Path(path)
    try:
        report = parse_report_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(
            f"Cannot read the report {str(path)!r}: {exc.strerror}. HINT: run "
            "'privacy-gate score' first; a missing audit never passes."
        ) from None
    except ValueError as exc:  # JSONDecodeError, or a NaN/Infinity (parse_report_json)
        raise ReportError(f"The report {str(path)!r} is not valid JSON: {exc}.") from None
    if not isinstance(report, dict):
        raise ReportError(f"The report {str(path)!r} must be a JSON object.")
    missing = [s for s in _REQUIRED_SECTIONS if s not in report]
    if missing:
        raise ReportError(
            f"The report {str(path)!r} lacks the section(s) {missing}. HINT: it "
            "was not written by 'privacy-gate score'; run a new audit."
        )
    outdated = outdated_schema_reason(report)
    if outdated is not None:
        # An older audit is stale (the gate fails, exit 1); an unknown schema is an error.
        stale = _major(report) == _STALE_MAJOR
        raise (OutdatedReportError if stale else ReportError)(
            f"The report {str(path)!r}: {outdated}."
        )
    return report


def read_audit_report(report: Mapping[str, Any], *, source: str = "The report") -> AuditReport:
    """The typed report of a JSON report (its schema checked by `load_report` or the
    caller); ``source`` names it in errors ("The report 'out/report.json'")."""
    try:
        return AuditReport.from_dict(report)
    except ReportError as exc:
        raise ReportError(f"{source}: {exc}") from None


def load_audit_report(path: str | Path) -> AuditReport:
    """`load_report`, then the typed report (`ReportError` names a malformed field)."""
    return read_audit_report(load_report(path), source=f"The report {str(path)!r}")
