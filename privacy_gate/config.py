"""Audit configuration: the risk definitions and the gate policy, validated from YAML.

A config is frozen, keyword-only dataclasses built with ``yaml.safe_load``. Unknown keys
are rejected with the list of valid ones, because a misspelt rule that silently does
nothing would let a leaking model through. A given config is the whole policy; the
packaged default applies only when no config is given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from privacy_gate.errors import ConfigError, bounded_number, invalid_value
from privacy_gate.risk_config import (
    NullChoice,
    RiskConfig,
    VarianceEstimator,
    check_section_keys,
    parse_risk,
)
from privacy_gate.rules import RULES, ParseContext, Policy, patient_auc_limits, policy_keys

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

_SETTINGS = ("subgroup_alpha", "detection_power", "fdr")
"""The gate section's keys that are not rules: levels the rules share."""


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """The release policy: the limit of each rule it checks, by the rule's key
    (`privacy_gate.rules`; a rule left out is not checked), and the shared levels."""

    limits: Mapping[str, Any] = field(default_factory=dict)
    subgroup_alpha: float = 0.05
    detection_power: float = 0.8
    fdr: float = 0.05

    def __post_init__(self) -> None:
        unknown = sorted(set(self.limits) - set(policy_keys()))
        if unknown:
            raise ConfigError(
                invalid_value("limits", "GateConfig", f"keys among {list(policy_keys())}",
                              unknown, "register a new rule with privacy_gate.rules.register_rule")
            )  # fmt: skip
        limits = {k: v for k, v in self.limits.items() if v is not None}
        object.__setattr__(self, "limits", limits)  # a copy: the caller's dict stays its own

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.limits.items())), *(getattr(self, n) for n in _SETTINGS)))

    def limit(self, key: str) -> Any:
        """The limit of rule ``key``; None when the policy does not check it."""
        return self.limits.get(key)

    def active_rules(self) -> tuple[str, ...]:
        """Keys of the rules this policy sets, in the gate's check order."""
        return tuple(key for key in policy_keys() if key in self.limits)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON: every rule of the first policy schema listed (null when unset,
        so existing digests hold), a later rule only when set."""
        data: dict[str, Any] = {
            key: rule.to_json(self.limits[key]) if key in self.limits else None
            for key, rule in RULES.items()
            if rule.in_policy and (rule.listed_when_unset or key in self.limits)
        }
        data.update({name: getattr(self, name) for name in _SETTINGS})
        return data


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
        data: dict[str, Any] = {"subgroups": list(self.subgroups)}
        if self.record_columns:  # absent when empty, so existing policy digests hold
            data["record_columns"] = list(self.record_columns)
        data["risk"] = asdict(self.risk)
        data["risk"]["fpr"] = list(self.risk.fpr)
        data["risk"]["null"] = self.risk.null.value
        data["risk"]["variance"] = self.risk.variance.value
        if self.risk.rmia_offline_a is None:
            data["risk"]["rmia_offline_a"] = "auto"
        data["gate"] = self.gate.to_dict()
        return data

    def sha256(self) -> str:
        """Digest of the normalised config: equal policies have equal digests."""
        return sha256_of_json(self.to_dict())

    def policy(self) -> Policy:
        """What the gate's rules read: the limits and the shared levels."""
        return Policy(
            limits=self.gate.limits,
            at_risk_auc=self.risk.at_risk_auc,
            min_group_size=self.risk.min_group_size,
            fdr=self.gate.fdr,
            detection_power=self.gate.detection_power,
            subgroup_alpha=self.gate.subgroup_alpha,
        )

    def patient_auc_limits(self) -> tuple[float, ...]:
        """The patient-level AUC limits that the noise floor must sit below."""
        return patient_auc_limits(self.policy())


def sha256_of_json(data: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _parse_gate(data: Mapping[str, Any], risk: RiskConfig) -> GateConfig:
    check_section_keys("gate", data, (*policy_keys(), *_SETTINGS))
    context = ParseContext(at_risk_auc=risk.at_risk_auc, fpr=risk.fpr)
    limits = {
        key: RULES[key].parse(data[key], context)
        for key in policy_keys()
        if data.get(key) is not None
    }
    settings: dict[str, Any] = {}
    if "detection_power" in data:
        settings["detection_power"] = bounded_number(
            "gate", "detection_power", data["detection_power"], lo=0.5, hi=1.0, hi_open=True
        )
    if "subgroup_alpha" in data:
        settings["subgroup_alpha"] = bounded_number(
            "gate", "subgroup_alpha", data["subgroup_alpha"], lo=0.0, hi=0.5, lo_open=True
        )
    if "fdr" in data:
        settings["fdr"] = bounded_number("gate", "fdr", data["fdr"], lo=0.0, hi=0.5, lo_open=True)
    return GateConfig(limits=limits, **settings)


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
    check_section_keys(source, data, ("subgroups", "record_columns", "risk", "gate"))
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
    risk = parse_risk(data.get("risk") or {})
    gate = _parse_gate(data.get("gate") or {}, risk)
    if not gate.active_rules():
        raise ConfigError(
            f"The gate section of {source} defines no rule, so nothing would be checked. "
            f"Valid rules are: {list(policy_keys())}. HINT: a given config is the whole "
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
