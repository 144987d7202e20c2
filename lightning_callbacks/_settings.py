"""The validated arguments of `PrivacyAuditCallback` (shared by both Lightning namespaces).

Every keyword argument is checked here, in the callback's ``__init__``, so that a
misconfiguration fails before hours of training rather than after them. Errors use one
sentence: "The 'x' parameter of PrivacyAuditCallback must be ... Got ... instead." plus
a ``HINT:``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from privacy_gate.adaptive import AdaptivePlan, parse_reference_models
from privacy_gate.config import AuditConfig
from privacy_gate.errors import ConfigError, invalid_value
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS
from privacy_gate.signals import Task
from privacy_gate.training.backends import backend_spec, parse_backend_options
from privacy_gate.training.callback_args import (
    Metadata,
    OnFail,
    check_metadata,
    check_policy_columns,
    check_subgroups,
    parse_config,
)

__all__ = ["AuditSettings", "Metadata", "OnFail", "validate_settings"]

OWNER = "PrivacyAuditCallback"


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """The callback's validated arguments (see `PrivacyAuditCallback` for each)."""

    config: AuditConfig
    holdout: Dataset[Any] | DataLoader[Any] | None
    patient_ids: Metadata | None
    subgroups: Mapping[str, Metadata]
    reference_models: int | AdaptivePlan
    backend: str
    """A registered backend's name (`privacy_gate.training.backends`)."""
    seed: int
    on_fail: OnFail
    output_dir: Path | None
    model_factory: Callable[[], nn.Module] | None
    task: Task
    plots: bool
    backend_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The backend's options, parsed by the backend."""
    log_model: bool = True


def _error(name: str, expected: str, got: Any, hint: str | None = None) -> ConfigError:
    return ConfigError(invalid_value(name, OWNER, expected, got, hint))


def _choice(name: str, kind: type[Enum], value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        options = [member.value for member in kind]
        raise _error(name, f"one of {options}", value) from None


def validate_settings(
    *,
    config: Any,
    holdout: Any,
    patient_ids: Any,
    subgroups: Any,
    reference_models: Any,
    backend: Any,
    seed: Any,
    on_fail: Any,
    output_dir: Any,
    model_factory: Any,
    task: Any,
    plots: Any,
    backend_options: Any = None,
    log_model: Any = True,
) -> AuditSettings:
    """Check every argument; return them normalised (enums, paths, a parsed policy)."""
    if holdout is not None and not isinstance(holdout, Dataset | DataLoader):
        raise _error(
            "holdout",
            "a torch Dataset or DataLoader of (input, label) records, or None",
            holdout,
            "None takes the datamodule's test set (or its validation set, with a warning).",
        )
    if patient_ids is not None:
        patient_ids = check_metadata("patient_ids", patient_ids, OWNER)
    subgroups = check_subgroups(subgroups, OWNER)
    try:
        reference_models = parse_reference_models(reference_models, owner="PrivacyAuditCallback")
    except ConfigError:
        raise _error(
            "reference_models",
            "an even integer >= 2, 'auto' or a privacy_gate.adaptive.AdaptivePlan",
            reference_models,
            f"each patient is IN for exactly half of the reference models; "
            f"{DEFAULT_REFERENCE_MODELS} is the default; 'auto' trains rounds of models "
            "until the verdict is settled.",
        ) from None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _error("seed", "an integer >= 0", seed)
    if output_dir is not None and not isinstance(output_dir, str | os.PathLike):
        raise _error(
            "output_dir",
            "a path or None (<trainer.default_root_dir>/privacy_audit)",
            output_dir,
        )
    if model_factory is not None and not callable(model_factory):
        raise _error(
            "model_factory",
            "a callable returning an untrained LightningModule, or None",
            model_factory,
            "None rebuilds the module as type(module)(**module.hparams); call "
            "self.save_hyperparameters() in its __init__.",
        )
    if not isinstance(plots, bool):
        raise _error("plots", "a bool", plots)
    if not isinstance(log_model, bool):
        raise _error("log_model", "a bool", log_model)
    parsed = parse_config(config, subgroups, OWNER)
    check_policy_columns(parsed, subgroups, OWNER)
    chosen = backend_spec(backend, OWNER, ConfigError).name
    return AuditSettings(
        config=parsed,
        holdout=holdout,
        patient_ids=patient_ids,
        subgroups=subgroups,
        reference_models=reference_models,
        backend=chosen,
        seed=seed,
        on_fail=_choice("on_fail", OnFail, on_fail),
        output_dir=None if output_dir is None else Path(output_dir),
        model_factory=model_factory,
        task=_choice("task", Task, task),
        plots=plots,
        backend_options=parse_backend_options(chosen, backend_options, OWNER, ConfigError),
        log_model=log_model,
    )
