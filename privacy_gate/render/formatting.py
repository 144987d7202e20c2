"""How figures are written in every rendering: AUCs, p-values, rates, counts, percentages."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping


# ------------------------------------------------------------------------ formatting
def _nonfinite(x: float) -> str | None:
    return None if math.isfinite(x) else str(x)


def fmt_auc(x: float | None) -> str:
    """AUCs with three decimals: the noise floor rarely supports more."""
    if x is None:
        return "n/a"
    return _nonfinite(x) or f"{x:.3f}"


def fmt_float(x: float | None, digits: int = 3) -> str:
    """A plain number, fixed decimals."""
    if x is None:
        return "n/a"
    return _nonfinite(x) or f"{x:.{digits}f}"


def _fmt_small(x: float | None, *, below: float, small: str, large: str) -> str:
    """Scientific notation under ``below`` so tiny values do not read as 0."""
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    if x == 0.0:
        return "0"
    return format(x, small if abs(x) < below else large)


def fmt_p(x: float | None) -> str:
    """p-values: scientific notation when small, so tiny values do not read as 0."""
    return _fmt_small(x, below=1e-3, small=".1e", large=".3f")


def fmt_rate(x: float | None) -> str:
    """Rates such as TPR at low FPR, which are often far below 1%."""
    return _fmt_small(x, below=1e-2, small=".2e", large=".3f")


def fmt_int(x: int | None) -> str:
    """Counts with thousands separators."""
    return "n/a" if x is None else f"{x:,}"


def fmt_percent(x: float | None, *, signed: bool = False, digits: int = 1) -> str:
    """A fraction as a percentage."""
    if x is None:
        return "n/a"
    if not math.isfinite(x):
        return str(x)
    sign = "+" if signed else ""
    return f"{x * 100:{sign}.{digits}f}%"


def fmt_fpr(key: str) -> str:
    """An FPR key such as ``"0.001"`` as ``0.1%``."""
    x = parse_number(key)
    return key if x is None else f"{x * 100:g}%"


def fmt_value(value: object) -> str:
    """A violation's value or limit, whatever JSON type it has."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return fmt_int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0.0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        # Per-FPR rules give {"0.001": 0.05}: read as "at FPR 0.001: 0.0533".
        return "; ".join(f"at {k}: {fmt_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(fmt_value(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def parse_number(key: str) -> float | None:
    try:
        return float(key)
    except ValueError:
        return None


def sorted_numeric_keys(keys: Iterable[str]) -> list[str]:
    """Keys such as ``"0.6"`` in numeric order; non-numeric keys last, as given."""
    parsed = [(k, parse_number(k)) for k in keys]
    numeric = sorted((x, k) for k, x in parsed if x is not None)
    return [k for _, k in numeric] + [k for k, x in parsed if x is None]


def fmt_patients(n: int | None) -> str:
    """``"1 patient"``, ``"12 patients"``."""
    return f"{fmt_int(n)} patient{'' if n == 1 else 's'}"
