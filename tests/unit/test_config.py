"""Tests of the audit config: defaults, the packaged policy, validation and round trips."""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy_gate.config import (
    AuditConfig,
    GateConfig,
    NullChoice,
    RiskConfig,
    VarianceEstimator,
    default_config,
    default_policy_text,
    load_config,
    parse_config,
)
from privacy_gate.errors import ConfigError

RISK_KEYS = sorted(
    [
        "at_risk_auc",
        "fpr",
        "tail_quantile",
        "min_group_size",
        "null",
        "null_replicates",
        "null_time_budget_s",
        "variance",
        "seed",
        "rmia_offline_a",
        "rmia_gamma",
    ]
)
GATE_KEYS = sorted(
    [
        "max_patient_auc",
        "max_patients_at_risk",
        "max_fraction_at_risk",
        "max_aggregate_auc",
        "max_aggregate_tpr_at_fpr",
        "max_subgroup_relative_change",
        "subgroup_alpha",
        "min_reference_models",
        "max_detectable_auc",
        "detection_power",
        "fdr",
    ]
)
ONE_RULE: dict[str, Any] = {"max_patient_auc": 0.95}


def _independent_sha256(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- defaults and the packaged policy ------------------------------------------------


def test_dataclass_defaults() -> None:
    risk = RiskConfig()
    assert risk.at_risk_auc == 0.9
    assert risk.fpr == (0.001, 0.01)
    assert risk.tail_quantile == 0.99
    assert risk.min_group_size == 20
    assert risk.null is NullChoice.AUTO
    assert risk.variance is VarianceEstimator.PLAIN
    assert risk.rmia_offline_a is None  # tuned
    gate = GateConfig()
    assert gate.active_rules() == ()
    assert gate.fdr == 0.05
    assert gate.subgroup_alpha == 0.05
    assert gate.detection_power == 0.8


def test_default_policy_has_documented_values() -> None:
    config = default_config()
    assert config.subgroups == ()
    assert config.risk == RiskConfig()
    gate = config.gate
    assert gate.limit("min_reference_models") is None  # the power rules derive K from the pool
    assert gate.limit("max_detectable_auc") == 0.999
    assert gate.detection_power == 0.8
    assert gate.limit("max_patient_auc") == 0.95
    assert gate.limit("max_patients_at_risk") == 0
    assert gate.fdr == 0.05
    assert gate.limit("max_aggregate_auc") == 0.6
    assert gate.limit("max_aggregate_tpr_at_fpr") == ((0.001, 0.01),)
    # No subgroup rule: the default names no subgroup columns, and the rule fails closed
    # without them.
    assert gate.limit("max_subgroup_relative_change") is None
    assert gate.subgroup_alpha == 0.05
    assert gate.limit("max_fraction_at_risk") is None
    assert set(gate.active_rules()) == {
        "max_detectable_auc",
        "max_patient_auc",
        "max_patients_at_risk",
        "max_aggregate_auc",
        "max_aggregate_tpr_at_fpr",
    }


def test_default_policy_hash_is_stable_and_matches_the_parsed_file(tmp_path: Path) -> None:
    first, second = default_config(), default_config()
    assert first == second
    assert first.sha256() == second.sha256()
    text = default_policy_text()
    packaged = resources.files("privacy_gate").joinpath("policies/default.yaml").read_text("utf-8")
    assert text == packaged
    parsed = parse_config(yaml.safe_load(text))
    assert parsed == first
    assert parsed.sha256() == first.sha256()
    copy_path = tmp_path / "policy.yaml"
    copy_path.write_text(text, encoding="utf-8")
    assert load_config(copy_path).sha256() == first.sha256()
    # Pinned against an independent canonical-JSON digest of the normalised config.
    assert first.sha256() == _independent_sha256(first.to_dict())
    assert len(first.sha256()) == 64


def test_hash_changes_with_any_value() -> None:
    base = default_config().to_dict()
    changed = copy.deepcopy(base)
    changed["gate"]["max_patient_auc"] = 0.96
    assert parse_config(changed).sha256() != parse_config(base).sha256()
    changed = copy.deepcopy(base)
    changed["risk"]["seed"] = 1
    assert parse_config(changed).sha256() != parse_config(base).sha256()


def test_hash_ignores_formatting_and_fpr_order() -> None:
    a = parse_config({"risk": {"fpr": [0.01, 0.001]}, "gate": ONE_RULE})
    b = parse_config({"risk": {"fpr": [0.001, 0.01]}, "gate": {"max_patient_auc": 0.95}})
    assert a == b
    assert a.sha256() == b.sha256()


# --- unknown keys --------------------------------------------------------------------


def test_unknown_top_level_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"gate": ONE_RULE, "gates": {}})
    message = str(info.value)
    assert "gates" in message
    for key in ("subgroups", "risk", "gate"):
        assert repr(key) in message


def test_unknown_risk_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"risk": {"at_risk_aucc": 0.9}, "gate": ONE_RULE})
    message = str(info.value)
    assert "at_risk_aucc" in message
    assert "risk" in message
    for key in RISK_KEYS:
        assert repr(key) in message


def test_unknown_gate_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"gate": {"max_patient_auc": 0.9, "max_pateint_auc": 0.9}})
    message = str(info.value)
    assert "max_pateint_auc" in message
    for key in GATE_KEYS:
        assert repr(key) in message


# --- wrong types and ranges ----------------------------------------------------------

BAD_RISK = [
    ("at_risk_auc", 1.2),
    ("at_risk_auc", 0.5),
    ("at_risk_auc", 1.0),
    ("at_risk_auc", "0.9"),
    ("at_risk_auc", True),
    ("at_risk_auc", float("nan")),
    ("fpr", []),
    ("fpr", 0.01),
    ("fpr", [0.01, 0.01]),
    ("fpr", [0.0]),
    ("fpr", [0.5]),
    ("fpr", [True]),
    ("fpr", ["0.01"]),
    ("tail_quantile", 1.0),
    ("tail_quantile", 0.4),
    ("tail_quantile", False),
    ("min_group_size", 0),
    ("min_group_size", 2.5),
    ("min_group_size", True),
    ("null_replicates", 19),
    ("null_replicates", 100.0),
    ("seed", -1),
    ("seed", "0"),
    ("rmia_offline_a", 1.5),
    ("rmia_offline_a", -0.1),
    ("rmia_offline_a", "tuned"),
    ("rmia_gamma", 0.5),
    ("rmia_gamma", 1.0),
    ("rmia_gamma", None),
    ("null", "exact"),
    ("null", True),
    ("null_time_budget_s", 0),
    ("null_time_budget_s", "60"),
    ("variance", "moderated"),
]


@pytest.mark.parametrize(("name", "value"), BAD_RISK)
def test_bad_risk_value_names_field_and_value(name: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"risk": {name: value}, "gate": ONE_RULE})
    message = str(info.value)
    assert repr(name) in message
    assert "risk" in message
    if name == "fpr" and isinstance(value, list) and value:
        # The message names either the whole list or the offending element.
        assert repr(value) in message or repr(value[0]) in message
    else:
        assert repr(value) in message


BAD_GATE = [
    ("max_patient_auc", 1.2),
    ("max_patient_auc", 0.4),
    ("max_patient_auc", True),
    ("max_patient_auc", "0.9"),
    ("max_patients_at_risk", -1),
    ("max_patients_at_risk", 1.5),
    ("max_patients_at_risk", True),
    ("max_fraction_at_risk", 1.5),
    ("max_fraction_at_risk", -0.1),
    ("max_fraction_at_risk", False),
    ("max_aggregate_auc", 1.01),
    ("max_aggregate_auc", 0.49),
    ("max_aggregate_auc", [0.6]),
    ("max_subgroup_relative_change", -0.5),
    ("max_subgroup_relative_change", True),
    pytest.param("max_subgroup_relative_change", 10**400, id="relative_change-huge-int"),
    ("min_reference_models", 1),
    ("min_reference_models", 32.0),
    ("min_reference_models", False),
    ("max_detectable_auc", 0.9),  # at risk.at_risk_auc: nothing to detect above it
    ("max_detectable_auc", 1.01),
    ("max_detectable_auc", True),
    ("detection_power", 0.4),
    ("detection_power", 1.0),
    ("subgroup_alpha", 0),
    ("subgroup_alpha", 0.6),
    ("subgroup_alpha", True),
    ("fdr", 0),
    ("fdr", 0.51),
    ("fdr", True),
    ("fdr", "0.05"),
    ("max_aggregate_tpr_at_fpr", 0.01),
    ("max_aggregate_tpr_at_fpr", {}),
    ("max_aggregate_tpr_at_fpr", [0.01]),
]


@pytest.mark.parametrize(("name", "value"), BAD_GATE)
def test_bad_gate_value_names_field_and_value(name: str, value: Any) -> None:
    gate = {"max_patient_auc": 0.95} if name != "max_patient_auc" else {}
    gate[name] = value
    with pytest.raises(ConfigError) as info:
        parse_config({"gate": gate})
    message = str(info.value)
    assert repr(name) in message
    assert "gate" in message
    assert repr(value) in message


def test_rmia_gamma_one_names_the_valid_range() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"risk": {"rmia_gamma": 1.0}, "gate": ONE_RULE})
    message = str(info.value)
    assert "(1.0, 1000000.0]" in message and "gamma > 1" in message


def test_removed_max_tail_se_says_why_and_what_replaces_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"gate": {"max_patient_auc": 0.95, "max_tail_se": 0.05}})
    message = str(info.value)
    assert "'max_tail_se'" in message and "no longer supported" in message
    assert "max_detectable_auc" in message


def test_enum_and_auto_values_parse() -> None:
    config = parse_config(
        {
            "risk": {"null": "analytic", "variance": "shrunk", "rmia_offline_a": "auto"},
            "gate": ONE_RULE,
        }
    )
    assert config.risk.null is NullChoice.ANALYTIC
    assert config.risk.variance is VarianceEstimator.SHRUNK
    assert config.risk.rmia_offline_a is None
    assert config.to_dict()["risk"]["rmia_offline_a"] == "auto"
    assert (
        parse_config({"risk": {"rmia_offline_a": 0.3}, "gate": ONE_RULE}).risk.rmia_offline_a == 0.3
    )


def test_tpr_rule_keyed_by_an_fpr_not_in_risk_fpr() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"gate": {"max_aggregate_tpr_at_fpr": {0.05: 0.1}}})
    message = str(info.value)
    assert "'max_aggregate_tpr_at_fpr'" in message
    assert "0.05" in message
    assert "risk.fpr" in message
    # ...and accepted once the FPR is listed.
    config = parse_config(
        {"risk": {"fpr": [0.05]}, "gate": {"max_aggregate_tpr_at_fpr": {0.05: 0.1}}}
    )
    assert config.gate.limit("max_aggregate_tpr_at_fpr") == ((0.05, 0.1),)


def test_tpr_rule_bad_limit_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"gate": {"max_aggregate_tpr_at_fpr": {0.001: 1.5}}})
    message = str(info.value)
    assert "max_aggregate_tpr_at_fpr[0.001]" in message
    assert "1.5" in message


def test_tpr_rule_string_keys_are_accepted() -> None:
    config = parse_config({"gate": {"max_aggregate_tpr_at_fpr": {"0.01": 0.2, "1e-3": 0.05}}})
    assert config.gate.limit("max_aggregate_tpr_at_fpr") == ((0.001, 0.05), (0.01, 0.2))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"subgroups": "sex", "gate": ONE_RULE}, "'subgroups'"),
        ({"subgroups": ["sex", "sex"], "gate": ONE_RULE}, "'subgroups'"),
        ({"subgroups": ["sex", 3], "gate": ONE_RULE}, "'subgroups'"),
        ({"subgroups": [""], "gate": ONE_RULE}, "'subgroups'"),
        ({"risk": [0.9], "gate": ONE_RULE}, "'risk'"),
        ({"gate": [0.9]}, "'gate'"),
        ([1, 2], "mapping"),
        ("gate", "mapping"),
    ],
)
def test_bad_structure(data: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config(data)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"gate": {}},
        {"gate": None},
        {"gate": {"fdr": 0.1, "subgroup_alpha": 0.01}},
        {"gate": {"max_patient_auc": None}},
        {"risk": {"at_risk_auc": 0.8}},
    ],
)
def test_a_policy_without_any_rule_is_an_error(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no rule") as info:
        parse_config(data)
    assert "max_patient_auc" in str(info.value)  # lists the valid rules


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        parse_config({"gate": {"fdr": 2}})


# --- round trip ------------------------------------------------------------------------


def _full_config() -> AuditConfig:
    return parse_config(
        {
            "subgroups": ["sex", "site"],
            "risk": {
                "at_risk_auc": 0.8,
                "fpr": [0.05, 0.001, 0.01],
                "tail_quantile": 0.95,
                "min_group_size": 5,
                "null": "permutation",
                "null_replicates": 40,
                "null_time_budget_s": 30,
                "variance": "shrunk",
                "seed": 7,
                "rmia_offline_a": 0.5,
                "rmia_gamma": 3.0,
            },
            "gate": {
                "max_patient_auc": 0.97,
                "max_patients_at_risk": 3,
                "max_fraction_at_risk": 0.01,
                "max_aggregate_auc": 0.7,
                "max_aggregate_tpr_at_fpr": {0.001: 0.02, 0.05: 0.2},
                "max_subgroup_relative_change": 2.5,
                "subgroup_alpha": 0.01,
                "min_reference_models": 16,
                "max_detectable_auc": 0.99,
                "detection_power": 0.9,
                "fdr": 0.1,
            },
        }
    )


@pytest.mark.parametrize("config", [default_config(), _full_config()], ids=["default", "full"])
def test_to_dict_round_trip(config: AuditConfig) -> None:
    data = config.to_dict()
    json.dumps(data, allow_nan=False)  # JSON-safe
    again = parse_config(data)
    assert again == config
    assert again.sha256() == config.sha256()
    # Also through YAML text (what `check` and users do).
    assert parse_config(yaml.safe_load(yaml.safe_dump(data))) == config


def test_full_config_values() -> None:
    config = _full_config()
    assert config.subgroups == ("sex", "site")
    assert config.risk.fpr == (0.001, 0.01, 0.05)
    assert config.gate.limit("max_aggregate_tpr_at_fpr") == ((0.001, 0.02), (0.05, 0.2))
    assert config.patient_auc_limits() == (0.97, 0.8)


_fprs = st.lists(
    st.sampled_from([0.0001, 0.001, 0.005, 0.01, 0.05, 0.1]), min_size=1, max_size=4, unique=True
)


@st.composite
def _config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    fpr = draw(_fprs)
    gate: dict[str, Any] = {
        "max_patient_auc": draw(st.none() | st.floats(0.5, 1.0)),
        "max_patients_at_risk": draw(st.none() | st.integers(0, 1000)),
        "max_fraction_at_risk": draw(st.none() | st.floats(0.0, 1.0)),
        "max_aggregate_auc": draw(st.none() | st.floats(0.5, 1.0)),
        "min_reference_models": draw(st.none() | st.integers(2, 512)),
        "detection_power": draw(st.floats(0.5, 0.99)),
        "max_subgroup_relative_change": draw(st.none() | st.floats(0.0, 100.0)),
        "fdr": draw(st.floats(1e-4, 0.5)),
        "subgroup_alpha": draw(st.floats(1e-4, 0.5)),
        "max_aggregate_tpr_at_fpr": draw(
            st.none() | st.dictionaries(st.sampled_from(fpr), st.floats(0.0, 1.0), min_size=1)
        ),
    }
    gate["min_reference_models"] = gate["min_reference_models"] or 8  # at least one rule
    at_risk_auc = draw(st.floats(0.501, 0.999))
    if draw(st.booleans()):
        gate["max_detectable_auc"] = draw(st.floats(at_risk_auc, 1.0, exclude_min=True))
    return {
        "subgroups": draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True)),
        "risk": {
            "at_risk_auc": at_risk_auc,
            "null": draw(st.sampled_from(["auto", "permutation", "analytic"])),
            "variance": draw(st.sampled_from(["plain", "shrunk"])),
            "rmia_offline_a": draw(st.sampled_from(["auto", 0.0, 0.3, 1.0])),
            "fpr": fpr,
            "tail_quantile": draw(st.floats(0.5, 0.999)),
            "min_group_size": draw(st.integers(1, 100)),
            "seed": draw(st.integers(0, 2**32)),
        },
        "gate": gate,
    }


@settings(max_examples=30, deadline=None)
@given(_config_dicts())
def test_round_trip_property(data: dict[str, Any]) -> None:
    config = parse_config(data)
    again = parse_config(config.to_dict())
    assert again == config
    assert again.sha256() == config.sha256()
    assert again.to_dict() == config.to_dict()


# --- load_config ---------------------------------------------------------------------


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("gate:\n  max_patient_auc: 0.9\n  fdr: 0.1\n", encoding="utf-8")
    config = load_config(path)
    assert config.gate.active_rules() == ("max_patient_auc",)
    assert config.gate.fdr == 0.1
    assert config.risk == RiskConfig()


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("gate: {max_patient_auc: 0.9\n  - : :\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert "broken.yaml" in str(info.value)


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="Cannot read") as info:
        load_config(path)
    assert "nope.yaml" in str(info.value)


def test_load_config_of_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_load_config_validates_values(tmp_path: Path) -> None:
    path = tmp_path / "strict.yaml"
    path.write_text("gate:\n  max_patient_auc: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "'max_patient_auc'" in str(info.value)
    assert "Got 2 instead" in str(info.value)


def test_load_config_unknown_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("gate:\n  max_patient_auc: 0.9\ngaet: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "typo.yaml" in str(info.value)
    assert "gaet" in str(info.value)


def test_empty_file_is_not_a_policy(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path)


def test_configs_are_frozen() -> None:
    config = default_config()
    with pytest.raises(AttributeError):
        config.gate.fdr = 1.0  # type: ignore[misc]


def test_an_unquoted_null_key_is_named_with_the_fix() -> None:
    """YAML reads `null: auto` as the key None: the error says to quote it, not that the
    key 'None' is unknown."""
    data = yaml.safe_load("risk:\n  null: permutation\ngate:\n  max_patient_auc: 0.95\n")
    with pytest.raises(ConfigError, match=r"'null' in risk must be quoted.*\"null\": permutation"):
        parse_config(data)
    quoted = yaml.safe_load('risk:\n  "null": permutation\ngate:\n  max_patient_auc: 0.95\n')
    assert parse_config(quoted).risk.null.value == "permutation"
