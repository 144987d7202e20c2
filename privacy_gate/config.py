"""Audit configuration: the risk definitions and the gate policy, validated from YAML.

A config is frozen, keyword-only dataclasses built with ``yaml.safe_load``. Unknown keys
are rejected with the list of valid ones, because a misspelt rule that silently does
nothing would let a leaking model through. A given config is the whole policy; the
packaged default applies only when no config is given.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from privacy_gate.errors import (
    ConfigError,
    bounded_number,
    check_known_keys,
    coerce_choice,
    integer_at_least,
    invalid_value,
)

__all__ = [
    "AuditConfig",
    "GateConfig",
    "NullChoice",
    "RiskConfig",
    "VarianceEstimator",
    "default_config",
    "load_config",
    "parse_config",
    "read_config_yaml",
]

_RULE_KEYS = (
    "max_patient_auc",
    "max_patients_at_risk",
    "max_fraction_at_risk",
    "max_aggregate_auc",
    "max_aggregate_tpr_at_fpr",
    "max_subgroup_relative_change",
    "min_reference_models",
    "max_detectable_auc",
)

_REMOVED_KEYS = {
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


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """The release policy. ``None`` means the rule is not checked."""

    max_patient_auc: float | None = None
    max_patients_at_risk: int | None = None
    max_fraction_at_risk: float | None = None
    max_aggregate_auc: float | None = None
    max_aggregate_tpr_at_fpr: tuple[tuple[float, float], ...] | None = None
    max_subgroup_relative_change: float | None = None
    subgroup_alpha: float = 0.05
    min_reference_models: int | None = None
    max_detectable_auc: float | None = None
    detection_power: float = 0.8
    fdr: float = 0.05

    def active_rules(self) -> tuple[str, ...]:
        """Names of the rules this policy checks."""
        return tuple(name for name in _RULE_KEYS if getattr(self, name) is not None)

    def patient_auc_limits(self, at_risk_auc: float) -> tuple[float, ...]:
        """The patient-level AUC limits that the noise floor must sit below."""
        limits: list[float] = []
        if self.max_patient_auc is not None:
            limits.append(self.max_patient_auc)
        if self.max_patients_at_risk is not None or self.max_fraction_at_risk is not None:
            limits.append(at_risk_auc)
        return tuple(limits)


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """The whole config: subgroup columns (patient- and record-level), risk definitions
    and gate policy."""

    subgroups: tuple[str, ...] = ()
    record_columns: tuple[str, ...] = ()
    risk: RiskConfig = field(default_factory=RiskConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that `parse_config` turns back into an equal config."""
        data = asdict(self)
        data["subgroups"] = list(self.subgroups)
        data["record_columns"] = list(self.record_columns)
        if not self.record_columns:  # absent as before, so existing policy digests hold
            del data["record_columns"]
        data["risk"]["fpr"] = list(self.risk.fpr)
        data["risk"]["null"] = self.risk.null.value
        data["risk"]["variance"] = self.risk.variance.value
        if self.risk.rmia_offline_a is None:
            data["risk"]["rmia_offline_a"] = "auto"
        tpr_rule = self.gate.max_aggregate_tpr_at_fpr
        data["gate"]["max_aggregate_tpr_at_fpr"] = (
            None if tpr_rule is None else {_fpr_key(f): t for f, t in tpr_rule}
        )
        return data

    def sha256(self) -> str:
        """Digest of the normalised config: equal policies have equal digests."""
        return sha256_of_json(self.to_dict())


def sha256_of_json(data: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fpr_key(fpr: float) -> str:
    """The string key of an FPR in reports and configs ("0.001")."""
    return repr(float(fpr))


def _check_keys(section: str, data: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    loaded: Mapping[Any, Any] = data  # YAML keys: an unquoted `null:` key is None
    if None in loaded and "null" in valid:
        raise ConfigError(
            f"The key 'null' in {section} must be quoted in YAML: unquoted, `null:` is YAML's "
            f"empty value, not the key. Got the key None instead. HINT: write "
            f"'\"null\": {loaded[None]}'."
        )
    removed = sorted(set(data) & set(_REMOVED_KEYS) - set(valid))
    if removed:
        key = removed[0]
        raise ConfigError(
            f"The key {key!r} in {section} is no longer supported: {_REMOVED_KEYS[key]}."
        )
    check_known_keys(
        data,
        sorted(valid),
        section,
        hint="check the spelling; a misspelt rule would silently not be checked.",
    )


def _parse_risk(data: Mapping[str, Any]) -> RiskConfig:
    names = tuple(f.name for f in fields(RiskConfig))
    _check_keys("risk", data, names)
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


def _parse_tpr_rule(raw: Any, fpr: tuple[float, ...]) -> tuple[tuple[float, float], ...]:
    expected = "a mapping from an FPR listed in risk.fpr to the largest allowed TPR"
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            invalid_value(
                "max_aggregate_tpr_at_fpr",
                "gate",
                expected,
                raw,
                "e.g. max_aggregate_tpr_at_fpr: {0.001: 0.01}",
            )
        )
    pairs: list[tuple[float, float]] = []
    for key, value in raw.items():
        try:
            rate = float(key)
        except (TypeError, ValueError):
            raise ConfigError(
                invalid_value("max_aggregate_tpr_at_fpr", "gate", expected, raw)
            ) from None
        if not any(math.isclose(rate, f, rel_tol=1e-9) for f in fpr):
            raise ConfigError(
                invalid_value(
                    "max_aggregate_tpr_at_fpr",
                    "gate",
                    f"keyed by FPRs in risk.fpr {list(fpr)}",
                    key,
                    "add the FPR to risk.fpr or use one already listed",
                )
            )
        limit = bounded_number("gate", f"max_aggregate_tpr_at_fpr[{key}]", value, lo=0.0, hi=1.0)
        pairs.append((next(f for f in fpr if math.isclose(rate, f, rel_tol=1e-9)), limit))
    return tuple(sorted(pairs))


def _parse_gate(data: Mapping[str, Any], risk: RiskConfig) -> GateConfig:
    names = tuple(f.name for f in fields(GateConfig))
    _check_keys("gate", data, names)
    kwargs: dict[str, Any] = {}
    auc_rules = ("max_patient_auc", "max_aggregate_auc")
    for name in auc_rules:
        if data.get(name) is not None:
            kwargs[name] = bounded_number("gate", name, data[name], lo=0.5, hi=1.0)
    for name in ("max_fraction_at_risk",):
        if data.get(name) is not None:
            kwargs[name] = bounded_number("gate", name, data[name], lo=0.0, hi=1.0)
    if data.get("max_patients_at_risk") is not None:
        kwargs["max_patients_at_risk"] = integer_at_least(
            "gate", "max_patients_at_risk", data["max_patients_at_risk"], lo=0
        )
    if data.get("min_reference_models") is not None:
        kwargs["min_reference_models"] = integer_at_least(
            "gate", "min_reference_models", data["min_reference_models"], lo=2
        )
    if data.get("max_subgroup_relative_change") is not None:
        kwargs["max_subgroup_relative_change"] = bounded_number(
            "gate",
            "max_subgroup_relative_change",
            data["max_subgroup_relative_change"],
            lo=0.0,
            hi=1e9,
        )
    if data.get("max_detectable_auc") is not None:
        kwargs["max_detectable_auc"] = bounded_number(
            "gate",
            "max_detectable_auc",
            data["max_detectable_auc"],
            lo=risk.at_risk_auc,
            hi=1.0,
            lo_open=True,
            hint="the smallest AUC the at-risk test must detect lies above risk.at_risk_auc",
        )
    if "detection_power" in data:
        kwargs["detection_power"] = bounded_number(
            "gate", "detection_power", data["detection_power"], lo=0.5, hi=1.0, hi_open=True
        )
    if data.get("max_aggregate_tpr_at_fpr") is not None:
        kwargs["max_aggregate_tpr_at_fpr"] = _parse_tpr_rule(
            data["max_aggregate_tpr_at_fpr"], risk.fpr
        )
    if "subgroup_alpha" in data:
        kwargs["subgroup_alpha"] = bounded_number(
            "gate", "subgroup_alpha", data["subgroup_alpha"], lo=0.0, hi=0.5, lo_open=True
        )
    if "fdr" in data:
        kwargs["fdr"] = bounded_number("gate", "fdr", data["fdr"], lo=0.0, hi=0.5, lo_open=True)
    return GateConfig(**kwargs)


def parse_config(data: Any, *, source: str = "config") -> AuditConfig:
    """Validate a config mapping (as loaded from YAML) into an `AuditConfig`.

    >>> parse_config({"gate": {"max_patient_auc": 0.95}}).gate.active_rules()
    ('max_patient_auc',)
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"The {source} must be a YAML mapping with keys 'subgroups', 'risk'"
            f" and 'gate'. Got {type(data).__name__} instead."
        )
    _check_keys(source, data, ("subgroups", "record_columns", "risk", "gate"))
    subgroups_raw = _column_list(source, data, "subgroups", "e.g. subgroups: [sex, race]")
    record_raw = _column_list(source, data, "record_columns", "e.g. record_columns: [scanner]")
    if set(subgroups_raw) & set(record_raw):
        raise ConfigError(
            invalid_value("record_columns", source, "columns not also in 'subgroups'",
                          sorted(set(subgroups_raw) & set(record_raw)),
                          "a column is an attribute of the patient or of the record"))  # fmt: skip
    for section in ("risk", "gate"):
        if data.get(section) is not None and not isinstance(data[section], Mapping):
            raise ConfigError(invalid_value(section, source, "a mapping", data[section]))
    risk = _parse_risk(data.get("risk") or {})
    gate = _parse_gate(data.get("gate") or {}, risk)
    if not gate.active_rules():
        raise ConfigError(
            f"The gate section of {source} defines no rule, so nothing would be checked. "
            f"Valid rules are: {list(_RULE_KEYS)}. HINT: a given config is the whole "
            "policy; copy the default policy (privacy-gate policy) and edit it."
        )
    return AuditConfig(
        subgroups=tuple(subgroups_raw), record_columns=tuple(record_raw), risk=risk, gate=gate
    )


def _column_list(source: str, data: Mapping[str, Any], key: str, example: str) -> list[str]:
    raw = data.get(key) or []
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise ConfigError(invalid_value(key, source, "a list of column names", raw, example))
    if len(set(raw)) != len(raw):
        raise ConfigError(invalid_value(key, source, "a list without duplicates", raw))
    return list(raw)


def read_config_yaml(path: str | Path) -> Any:
    """The parsed YAML of a config file; errors are one line naming the file and place."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read the config file {str(path)!r}: {exc.strerror}.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"The config file {str(path)!r} is not valid YAML: {detail}") from None


def load_config(path: str | Path) -> AuditConfig:
    """Read and validate a YAML config file."""
    return parse_config(read_config_yaml(path), source=f"config {Path(path).name}")


def default_policy_text() -> str:
    """The packaged default policy, as shipped (with its comments)."""
    return resources.files("privacy_gate").joinpath("policies/default.yaml").read_text("utf-8")


def default_config() -> AuditConfig:
    """The packaged default policy (see ``privacy_gate/policies/default.yaml``)."""
    return parse_config(yaml.safe_load(default_policy_text()), source="default policy")
