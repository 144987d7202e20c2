"""The validated arguments of the Hugging Face `PrivacyAuditCallback`.

Every keyword argument is checked in the callback's ``__init__``, before any training,
with the package's one error sentence ("The 'x' parameter of PrivacyAuditCallback must
be ... Got ... instead." plus a ``HINT:``). The arguments it shares with the Lightning
callback are checked by the same code (`privacy_gate.training.callback_args`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from privacy_gate.adaptive import AdaptivePlan, parse_reference_models
from privacy_gate.config import AuditConfig
from privacy_gate.errors import ConfigError, coerce_choice, invalid_value
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

__all__ = ["OWNER", "HFAuditSettings", "validate_settings"]

OWNER = "PrivacyAuditCallback"


@dataclass(frozen=True, kw_only=True)
class HFAuditSettings:
    """The callback's validated arguments (see `PrivacyAuditCallback` for each)."""

    config: AuditConfig
    holdout: Any
    factory: Callable[[], nn.Module] | None
    input_key: str | None
    patient_ids: Metadata | None
    subgroups: Mapping[str, Metadata]
    reference_models: int | AdaptivePlan
    backend: str
    seed: int
    on_fail: OnFail
    output_dir: Path | None
    task: Task
    plots: bool
    backend_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _error(name: str, expected: str, got: Any, hint: str | None = None) -> ConfigError:
    return ConfigError(invalid_value(name, OWNER, expected, got, hint))


def _indexable(value: Any) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__")


def validate_settings(
    *,
    config: Any,
    holdout: Any,
    factory: Any,
    input_key: Any,
    patient_ids: Any,
    subgroups: Any,
    reference_models: Any,
    backend: Any,
    seed: Any,
    on_fail: Any,
    output_dir: Any,
    task: Any,
    plots: Any,
    backend_options: Any,
) -> HFAuditSettings:
    """Check every argument; return them normalised (enums, paths, a parsed policy)."""
    if holdout is not None and (not _indexable(holdout) or isinstance(holdout, str | bytes)):
        raise _error(
            "holdout",
            "an indexable dataset with a length (a torch Dataset or a datasets.Dataset) of "
            "dict examples, or None",
            holdout,
            "None takes the Trainer's eval_dataset, with a warning; a dedicated set of "
            "records the model never trained on is best.",
        )
    if factory is not None and not callable(factory):
        raise _error(
            "factory",
            "a callable returning a fresh model (the candidate's starting point), or None",
            factory,
            "None uses the Trainer's model_init; for a fine-tune, load the pretrained "
            "weights from a local path, e.g. lambda: AutoModelForImageClassification."
            "from_pretrained('/models/base', num_labels=2).",
        )
    if input_key is not None and (not isinstance(input_key, str) or not input_key):
        raise _error(
            "input_key",
            "the name of the examples' input tensor (a non-empty string), or None",
            input_key,
            "None looks for pixel_values, input_values, input_features, input_ids, x, inputs.",
        )
    if patient_ids is not None:
        patient_ids = check_metadata("patient_ids", patient_ids, OWNER)
    subgroups = check_subgroups(subgroups, OWNER)
    try:
        reference_models = parse_reference_models(reference_models, owner=OWNER)
    except ConfigError:
        raise _error(
            "reference_models",
            "an even integer >= 2, 'auto' or a privacy_gate.adaptive.AdaptivePlan",
            reference_models,
            f"each patient is IN for exactly half of the reference models; "
            f"{DEFAULT_REFERENCE_MODELS} is the default.",
        ) from None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _error("seed", "an integer >= 0", seed)
    if output_dir is not None and not isinstance(output_dir, str | os.PathLike):
        raise _error(
            "output_dir",
            "a path or None (<TrainingArguments.output_dir>/privacy_audit)",
            output_dir,
        )
    if not isinstance(plots, bool):
        raise _error("plots", "a bool", plots)
    parsed = parse_config(config, subgroups, OWNER)
    check_policy_columns(parsed, subgroups, OWNER)
    chosen = backend_spec(backend, OWNER, ConfigError).name
    return HFAuditSettings(
        config=parsed,
        holdout=holdout,
        factory=factory,
        input_key=input_key,
        patient_ids=patient_ids,
        subgroups=subgroups,
        reference_models=reference_models,
        backend=chosen,
        seed=seed,
        on_fail=coerce_choice(OnFail, on_fail, "on_fail", OWNER),
        output_dir=None if output_dir is None else Path(output_dir),
        task=coerce_choice(Task, task, "task", OWNER),
        plots=plots,
        backend_options=parse_backend_options(chosen, backend_options, OWNER, ConfigError),
    )
