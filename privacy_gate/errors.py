"""Exceptions raised by privacy-gate.

Every error subclasses the builtin it refines (``ValueError`` for bad input), so
callers that already catch ``ValueError`` keep working. Messages follow one sentence
shape: "The 'x' parameter of Y must be ... Got ... instead." plus a ``HINT:``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import Enum
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "InputError",
    "OutdatedReportError",
    "PrivacyGateError",
    "PrivacyGateFailed",
    "ReportError",
    "bounded_number",
    "check_known_keys",
    "coerce_choice",
    "integer_at_least",
    "invalid_value",
]

E = TypeVar("E", bound=Enum)


class PrivacyGateError(Exception):
    """Base class of every error privacy-gate raises on purpose."""


class PrivacyGateFailed(RuntimeError):
    """The audited model failed the privacy gate (a training callback's
    ``on_fail="raise"``), or the gate could not decide. ``violations`` names every violated
    rule; ``report`` is the report path. Not an input error: the audit ran."""

    def __init__(
        self, message: str, *, status: str, violations: tuple[str, ...], report: str | None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.violations = violations
        self.report = report


class InputError(PrivacyGateError, ValueError):
    """Signals, records or command-line arguments that cannot be audited."""


class ConfigError(PrivacyGateError, ValueError):
    """A policy/config file or value that is not valid."""


class ReportError(PrivacyGateError, ValueError):
    """A report that cannot be evaluated (corrupt, wrong schema, changed risk section)."""


class OutdatedReportError(ReportError):
    """A report of an older schema: a stale audit, which fails the gate (exit 1)."""


def invalid_value(name: str, owner: str, expected: str, got: Any, hint: str | None = None) -> str:
    """Build the uniform error sentence naming the field, the value and the fix.

    >>> invalid_value("fdr", "gate", "a float in (0, 0.5]", 2.0)
    "The 'fdr' parameter of gate must be a float in (0, 0.5]. Got 2.0 instead."
    """
    message = f"The '{name}' parameter of {owner} must be {expected}. Got {got!r} instead."
    if hint:
        message += f" HINT: {hint}"
    return message


def check_known_keys(
    keys: Iterable[Any],
    valid: Iterable[str],
    owner: str,
    *,
    hint: str | None = None,
    error: type[Exception] = ConfigError,
    what: str = "key",
) -> None:
    """Refuse keys that are not ``valid``: a misspelt key would silently do nothing.

    >>> check_known_keys({"epochs": 1, "lr": 0.1}, ["epochs", "learning_rate"], "recipe")
    Traceback (most recent call last):
    ...
    privacy_gate.errors.ConfigError: Unknown key(s) ['lr'] in recipe. Valid keys are: [...].
    """
    known = list(valid)
    unknown = sorted(set(map(str, keys)) - set(known))
    if unknown:
        message = f"Unknown {what}(s) {unknown} in {owner}. Valid keys are: {known}."
        raise error(f"{message} HINT: {hint}" if hint else message)


def coerce_choice(
    choices: type[E], value: Any, name: str, owner: str, error: type[Exception] = ConfigError
) -> E:
    """``value`` as a member of ``choices``: a member, or its string as written in YAML.

    The Python API takes the same strings as the YAML (``Recipe(optimizer="adam")``);
    anything else is refused here, with the valid values, not later in the audit.
    """
    if isinstance(value, choices):
        return value
    valid = [c.value for c in choices]
    if isinstance(value, str) and value in valid:
        return choices(value)
    raise error(invalid_value(name, owner, f"one of {valid}", value))


def bounded_number(
    section: str,
    name: str,
    value: Any,
    *,
    lo: float,
    hi: float,
    lo_open: bool = False,
    hi_open: bool = False,
    expected: str | None = None,
    hint: str | None = None,
) -> float:
    """A finite real number in [lo, hi] (or open ends), never a bool: YAML's `true` is 1."""
    bracket = ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
    expected = expected or f"a number in {bracket}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(invalid_value(name, section, expected, value, hint))
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(invalid_value(name, section, expected, value, hint)) from None
    below = number <= lo if lo_open else number < lo
    above = number >= hi if hi_open else number > hi
    if not math.isfinite(number) or below or above:
        raise ConfigError(invalid_value(name, section, expected, value, hint))
    return number


def integer_at_least(section: str, name: str, value: Any, *, lo: int) -> int:
    """An int >= lo; a float such as 5.0 is refused rather than truncated."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(invalid_value(name, section, f"an integer >= {lo}", value))
    return int(value)
