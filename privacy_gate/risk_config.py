"""The risk section of a config: how risk is measured (changing it needs a new audit),
validated from YAML, and the key check every section of a config shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from privacy_gate.errors import (
    ConfigError,
    bounded_number,
    check_known_keys,
    coerce_choice,
    integer_at_least,
    invalid_value,
)

__all__ = ["NullChoice", "RiskConfig", "VarianceEstimator", "check_section_keys", "parse_risk"]

REMOVED_KEYS = {
    "max_tail_se": (
        "it averaged the SE of the tail's record AUCs, which is largest where nothing leaks "
        "(AUC 0.5), so it failed private models and passed leaky ones. HINT: use "
        "max_detectable_auc (the smallest AUC the at-risk test detects with 80% power)"
    ),
}
"""Keys of older policies, each with why it went and what replaces it."""


class NullChoice(str, Enum):
    """How the noise floor's null distribution is computed (``risk.null``)."""

    AUTO = "auto"
    PERMUTATION = "permutation"
    ANALYTIC = "analytic"


class VarianceEstimator(str, Enum):
    """Per-record IN/OUT variances (``risk.variance``): the plain sample variances, or
    empirical-Bayes shrinkage towards a prior fitted across records (limma's fitFDist)."""

    PLAIN = "plain"
    SHRUNK = "shrunk"


@dataclass(frozen=True, kw_only=True)
class RiskConfig:
    """How risk is measured. Changing any of these needs a new audit."""

    at_risk_auc: float = 0.9
    fpr: tuple[float, ...] = (0.001, 0.01)
    tail_quantile: float = 0.99
    min_group_size: int = 20
    null: NullChoice = NullChoice.AUTO
    null_replicates: int = 100
    null_time_budget_s: float = 120.0
    variance: VarianceEstimator = VarianceEstimator.PLAIN
    seed: int = 0
    rmia_offline_a: float | None = None
    """None: tuned on one reference model (written ``auto``)."""
    rmia_gamma: float = 2.0


def check_section_keys(section: str, data: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    """Unknown keys are refused with the valid ones; keys of older policies with why
    they went; YAML's unquoted ``null:`` key with how to quote it."""
    loaded: Mapping[Any, Any] = data  # YAML keys: an unquoted `null:` key is None
    if None in loaded and "null" in valid:
        raise ConfigError(
            f"The key 'null' in {section} must be quoted in YAML: unquoted, `null:` is YAML's "
            f"empty value, not the key. Got the key None instead. HINT: write "
            f"'\"null\": {loaded[None]}'."
        )
    removed = sorted(set(data) & set(REMOVED_KEYS) - set(valid))
    if removed:
        key = removed[0]
        raise ConfigError(
            f"The key {key!r} in {section} is no longer supported: {REMOVED_KEYS[key]}."
        )
    check_known_keys(
        data,
        sorted(valid),
        section,
        hint="check the spelling; a misspelt rule would silently not be checked.",
    )


def parse_risk(data: Mapping[str, Any]) -> RiskConfig:
    names = tuple(f.name for f in fields(RiskConfig))
    check_section_keys("risk", data, names)
    kwargs: dict[str, Any] = {}
    if "at_risk_auc" in data:
        kwargs["at_risk_auc"] = bounded_number(
            "risk", "at_risk_auc", data["at_risk_auc"], lo=0.5, hi=1.0, lo_open=True, hi_open=True
        )
    if "fpr" in data:
        raw = data["fpr"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(
                invalid_value(
                    "fpr",
                    "risk",
                    "a non-empty list of numbers in (0, 0.5)",
                    raw,
                    "e.g. fpr: [0.001, 0.01]",
                )
            )
        values = [
            bounded_number("risk", "fpr", v, lo=0.0, hi=0.5, lo_open=True, hi_open=True)
            for v in raw
        ]
        if len(set(values)) != len(values):
            raise ConfigError(invalid_value("fpr", "risk", "a list without duplicates", raw))
        kwargs["fpr"] = tuple(sorted(values))
    if "tail_quantile" in data:
        kwargs["tail_quantile"] = bounded_number(
            "risk", "tail_quantile", data["tail_quantile"], lo=0.5, hi=1.0, hi_open=True
        )
    if "min_group_size" in data:
        kwargs["min_group_size"] = integer_at_least(
            "risk", "min_group_size", data["min_group_size"], lo=1
        )
    if "null" in data:
        kwargs["null"] = coerce_choice(NullChoice, data["null"], "null", "risk")
    if "variance" in data:
        kwargs["variance"] = coerce_choice(VarianceEstimator, data["variance"], "variance", "risk")
    if "null_replicates" in data:
        kwargs["null_replicates"] = integer_at_least(
            "risk", "null_replicates", data["null_replicates"], lo=20
        )
    if "null_time_budget_s" in data:
        kwargs["null_time_budget_s"] = bounded_number(
            "risk", "null_time_budget_s", data["null_time_budget_s"], lo=0.0, hi=1e7, lo_open=True
        )
    if "seed" in data:
        kwargs["seed"] = integer_at_least("risk", "seed", data["seed"], lo=0)
    if data.get("rmia_offline_a", "auto") != "auto":
        kwargs["rmia_offline_a"] = bounded_number(
            "risk",
            "rmia_offline_a",
            data["rmia_offline_a"],
            lo=0.0,
            hi=1.0,
            expected="'auto' or a number in [0.0, 1.0]",
        )
    if "rmia_gamma" in data:
        kwargs["rmia_gamma"] = bounded_number(
            "risk",
            "rmia_gamma",
            data["rmia_gamma"],
            lo=1.0,
            hi=1e6,
            lo_open=True,
            hint="RMIA counts the population records z with LR(x) / LR(z) >= gamma, and x "
            "itself must never count, so gamma > 1 (the paper uses 2)",
        )
    return RiskConfig(**kwargs)
