"""What the training-loop callbacks share (the Lightning callback in
``lightning_callbacks`` and the Hugging Face one in `privacy_gate.integrations`): the
validation of their common arguments (the policy, metadata aligned with the audit pool,
``on_fail``) and what a verdict makes them do (`decide_action`).

Every error uses one sentence, naming the owner: "The 'x' parameter of Owner must be ...
Got ... instead." plus a ``HINT:``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch

from privacy_gate.config import AuditConfig, default_config, load_config
from privacy_gate.errors import ConfigError, InputError, PrivacyGateError, invalid_value
from privacy_gate.gate import Status

__all__ = [
    "Action",
    "Metadata",
    "OnFail",
    "aligned_metadata",
    "check_metadata",
    "check_policy_columns",
    "check_subgroups",
    "decide_action",
    "parse_config",
    "pool_metadata",
]

#: Metadata aligned with the pool (members, then holdout), or a callable
#: ``(split, index) -> value`` with ``split`` in {"train", "holdout"}.
Metadata = Sequence[Any] | np.ndarray[Any, Any] | torch.Tensor | Callable[[str, int], Any]


class OnFail(str, Enum):
    """What a failing gate does after the audit."""

    RAISE = "raise"
    WARN = "warn"
    TAG = "tag"


class Action(str, Enum):
    """What a callback does with a decision."""

    NONE = "none"  # passed
    RAISE = "raise"
    WARN = "warn"
    TAG = "tag"  # privacy_gate.status on the MLflow run; a warning without one


def decide_action(status: str, on_fail: OnFail) -> Action:
    """Pure: the action for a gate status under the ``on_fail`` policy; an undecidable
    audit (``error``) always raises.

    >>> decide_action("fail", OnFail.WARN)
    <Action.WARN: 'warn'>
    >>> decide_action("error", OnFail.WARN)
    <Action.RAISE: 'raise'>
    """
    if status == Status.PASS.value:
        return Action.NONE
    if status != Status.FAIL.value:
        return Action.RAISE
    return Action(on_fail.value)


def _error(name: str, owner: str, expected: str, got: Any, hint: str | None = None) -> ConfigError:
    return ConfigError(invalid_value(name, owner, expected, got, hint))


def parse_config(value: Any, subgroups: Mapping[str, Any], owner: str) -> AuditConfig:
    """The ``config`` argument: an `AuditConfig`, the path of a YAML policy, or None (the
    packaged default policy, analysing the given ``subgroups`` columns)."""
    if value is None:
        return dataclasses.replace(default_config(), subgroups=tuple(subgroups))
    if isinstance(value, AuditConfig):
        return value
    if isinstance(value, (str, os.PathLike)):
        try:
            return load_config(os.fspath(value))
        except PrivacyGateError as exc:
            raise _error(
                "config",
                owner,
                "an AuditConfig or the path of a valid YAML policy",
                os.fspath(value),
                str(exc),
            ) from None
    raise _error(
        "config",
        owner,
        "an AuditConfig, the path of a YAML policy, or None (the packaged default policy)",
        value,
    )


def check_metadata(name: str, value: Any, owner: str) -> Metadata:
    """``patient_ids`` or one subgroup column: a sequence aligned with the pool, or a
    callable ``(split, index) -> value``."""
    if callable(value) or isinstance(value, torch.Tensor | np.ndarray):
        return value  # type: ignore[no-any-return]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return value
    raise _error(
        name,
        owner,
        "a sequence aligned with the audit pool (train records, then holdout records) or a "
        "callable (split, index) -> value",
        value,
        "split is 'train' or 'holdout' and index the record's position in that split.",
    )


def check_subgroups(value: Any, owner: str) -> dict[str, Metadata]:
    """The ``subgroups`` argument: column name -> `check_metadata` values (None: none)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise _error(
            "subgroups",
            owner,
            "a mapping from column name to a sequence or callable",
            value,
            "e.g. subgroups={'sex': sexes, 'site': lambda split, i: ...}.",
        )
    return {k: check_metadata(f"subgroups[{k!r}]", v, owner) for k, v in value.items()}


def check_policy_columns(config: AuditConfig, subgroups: Mapping[str, Any], owner: str) -> None:
    """Every subgroup column the policy analyses is given."""
    missing = [column for column in config.subgroups if column not in subgroups]
    if missing:
        raise _error(
            "subgroups",
            owner,
            f"a mapping with the policy's subgroup columns {list(config.subgroups)}",
            sorted(subgroups),
            f"add the column(s) {missing}, or remove them from the policy's 'subgroups'.",
        )


def aligned_metadata(
    name: str, value: Metadata, n_train: int, n_holdout: int, owner: str
) -> list[Any]:
    """``value`` as one entry per pool record (train records, then holdout records)."""
    if callable(value) and not isinstance(value, torch.Tensor | np.ndarray):
        function: Callable[[str, int], Any] = value
        return [function("train", i) for i in range(n_train)] + [
            function("holdout", j) for j in range(n_holdout)
        ]
    values = value.tolist() if isinstance(value, torch.Tensor | np.ndarray) else list(value)
    if len(values) != n_train + n_holdout:
        raise InputError(
            f"The '{name}' parameter of {owner} has {len(values)} values but the audit pool "
            f"has {n_train + n_holdout} records ({n_train} train + {n_holdout} holdout). "
            "HINT: metadata is aligned with the train records followed by the holdout."
        )
    return values


def pool_metadata(
    patient_ids: Metadata | None,
    subgroups: Mapping[str, Metadata],
    n_train: int,
    n_holdout: int,
    owner: str,
) -> tuple[list[str | None] | None, dict[str, list[str]]]:
    """Patient ids (None stays None: the record is its own patient) and subgroup columns
    as strings, one per pool record, for `privacy_gate.training.AuditData`."""
    ids = None
    if patient_ids is not None:
        ids = [
            None if p is None else str(p)
            for p in aligned_metadata("patient_ids", patient_ids, n_train, n_holdout, owner)
        ]
    columns = {
        column: [
            str(v)
            for v in aligned_metadata(f"subgroups[{column!r}]", values, n_train, n_holdout, owner)
        ]
        for column, values in subgroups.items()
    }
    return ids, columns
