"""Typed report sections to JSON and back, driven by the dataclasses' type hints.

Reading is strict, because the gate decides on what is read: a field of the wrong type
is an error that names the field (``summary.noise_floor.max_patient_auc_q95``), never a
figure silently read as missing. Keys a newer minor schema adds are ignored, or kept in a
field named ``extra`` where a section declares one (``audit``'s provenance), so that
writing a read report gives back the same JSON.

Field metadata: ``omit_none`` leaves a None field out of the JSON (optional sections
that older reports lack); ``transient`` keeps a field out of the JSON altogether.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Hashable, Mapping
from typing import Any, TypeVar, cast

from privacy_gate.errors import ReportError

__all__ = ["EXTRA", "OMIT_NONE", "TRANSIENT", "decode", "encode"]

EXTRA = "extra"
"""The field that collects a section's unknown keys (written back unchanged)."""
OMIT_NONE: Mapping[str, bool] = types.MappingProxyType({"omit_none": True})
TRANSIENT: Mapping[str, bool] = types.MappingProxyType({"transient": True})

T = TypeVar("T")


def _fail(path: str, expected: str, value: Any) -> ReportError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ReportError(
        f"The report's field {path!r} must be {expected}, not {shown}. HINT: the report "
        "was not written by this privacy-gate or was edited; run a new audit."
    )


@functools.cache
def _hints(cls: Hashable) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(kind: Any, value: Any, path: str) -> Any:
    """``value`` (parsed JSON) as ``kind``; raises `ReportError` naming ``path``."""
    if kind is Any:
        return value
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(kind)):
            return None
        if len(arms) != 1:
            raise TypeError(f"codec: unsupported union {kind!r} at {path}")
        return decode(arms[0], value, path)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise _fail(path, "a JSON array", value)
        return tuple(decode(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or kind is dict:
        item = typing.get_args(kind)[1] if typing.get_args(kind) else Any
        if not isinstance(value, Mapping):
            raise _fail(path, "a JSON object", value)
        return {str(k): decode(item, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _decode_dataclass(kind, value, path)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            raise _fail(path, f"one of {allowed}", value) from None
    return _decode_scalar(kind, value, path)


def _decode_scalar(kind: Any, value: Any, path: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise _fail(path, "true or false", value)
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, "an integer", value)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, "a number", value)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise _fail(path, "a string", value)
        return value
    raise TypeError(f"codec: unsupported type {kind!r} at {path}")


def _decode_dataclass(cls: type[T], value: Any, path: str) -> T:
    if not isinstance(value, Mapping):
        raise _fail(path, "a JSON object", value)
    hints = _hints(cast(Hashable, cls))
    known: dict[str, Any] = {}
    names = set()
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        names.add(field.name)
        if field.name == EXTRA or field.metadata.get("transient"):
            continue
        where = f"{path}.{field.name}" if path else field.name
        if field.name in value:
            known[field.name] = decode(hints[field.name], value[field.name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ReportError(
                f"The report lacks the field {where!r}. HINT: the report was not written by "
                "this privacy-gate or was edited; run a new audit."
            )
    if EXTRA in names:
        known[EXTRA] = {k: v for k, v in value.items() if k not in names}
    return cls(**known)


def encode(value: Any) -> Any:
    """A typed section as plain JSON values (dicts, lists, str, numbers, bool, None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if field.name == EXTRA or field.metadata.get("transient"):
                continue
            if item is None and field.metadata.get("omit_none"):
                continue
            out[field.name] = encode(item)
        for key, item in (getattr(value, EXTRA, None) or {}).items():
            out.setdefault(key, encode(item))
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value
