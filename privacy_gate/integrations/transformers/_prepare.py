"""What the callback settles before the first training step (``on_train_begin``): the
factory of fresh models, the audit pool, the recipe and the path the reference models
take, the MLflow run. A long fine-tune is never lost to an argument or a dataset that
the audit cannot use."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from privacy_gate.errors import ConfigError, InputError
from privacy_gate.integrations.transformers._data import (
    LogitsModel,
    dataset_tensors,
    forward_keys,
)
from privacy_gate.integrations.transformers._recipe import (
    loss_problem,
    map_recipe,
    optimizer_problem,
    trainer_problems,
)
from privacy_gate.integrations.transformers._settings import OWNER, HFAuditSettings
from privacy_gate.training.callback_args import pool_metadata
from privacy_gate.training.data import AuditData
from privacy_gate.training.inputs import check_model_outputs
from privacy_gate.training.recipe import Recipe

__all__ = ["PreparedFit", "prepare_fit"]

_LOG = logging.getLogger("privacy_gate.integrations")
_PROBE = 8  # records of the loss probe
_VOLATILE_ARGUMENTS = ("output_dir", "logging_dir", "run_name", "report_to", "hub_token")


@dataclass(frozen=True)
class PreparedFit:
    """The audit's inputs, read from the Trainer before training.

    Attributes:
        factory: a fresh Hugging Face model (the candidate's starting point).
        data: the pool (train records, then holdout).
        input_key: the examples' input tensor.
        recipe: the `Recipe` the arguments map to (it keys the store either way).
        problems: why the recipe is not exact (empty: it is): then each reference model
            trains with its own Trainer.
        arguments: the Trainer's arguments that key the store of finished models.
        mlflow_run: the active MLflow run's id and tracking URI at the start, or None.
    """

    trainer: Any
    factory: Callable[[], nn.Module]
    data: AuditData
    input_key: str
    recipe: Recipe
    problems: tuple[str, ...]
    arguments: dict[str, Any]
    mlflow_run: tuple[str, str] | None


def _call_model_init(trainer: Any) -> nn.Module:
    return trainer.call_model_init()  # type: ignore[no-any-return]  # 0 or 1 argument


def fresh_model_factory(trainer: Any, settings: HFAuditSettings) -> Callable[[], nn.Module]:
    """The ``factory`` argument, else the Trainer's ``model_init``; refused when neither
    exists or the factory does not build an ``nn.Module``."""
    factory: Callable[[], nn.Module]
    if settings.factory is not None:
        factory, name = settings.factory, "factory"
    elif getattr(trainer, "model_init", None) is not None:
        init = functools.partial(_call_model_init, trainer)
        init.__wrapped__ = trainer.model_init  # type: ignore[attr-defined]  # the report's name
        factory, name = init, "the Trainer's model_init"
    else:
        raise ConfigError(
            f"The 'factory' parameter of {OWNER} must be given when the Trainer has no "
            "model_init. Got None instead. HINT: reference models start where the candidate "
            "started: pass factory=<callable returning that model>, loading pretrained "
            "weights from a local path for a fine-tune, or build the Trainer with "
            "model_init=... instead of model=...."
        )
    try:
        with torch.random.fork_rng(devices=[]):  # the fit's own randomness stays as it was
            fresh = factory()
    except Exception as exc:
        raise InputError(
            f"{OWNER} cannot build a fresh model with {name} ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(fresh, nn.Module):
        raise InputError(
            f"{name} must return an nn.Module for {OWNER}. Got {type(fresh).__name__} instead."
        )
    return factory


def _holdout(trainer: Any, settings: HFAuditSettings) -> Any:
    if settings.holdout is not None:
        return settings.holdout
    evaluation = getattr(trainer, "eval_dataset", None)
    if evaluation is None or isinstance(evaluation, dict):
        raise InputError(
            f"The 'holdout' parameter of {OWNER} must be given when the Trainer has no single "
            "eval_dataset. Got None instead. HINT: pass holdout=<a dataset of records the "
            "model never trained on>."
        )
    warnings.warn(
        f"{OWNER} uses the Trainer's eval_dataset as the audit's held-out records. If it "
        "steered training (early stopping, load_best_model_at_end), the candidate is not "
        "independent of it. HINT: pass a dedicated holdout=....",
        UserWarning,
        stacklevel=3,
    )
    return evaluation


def _arguments(args: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(args.to_json_string())
    return {k: v for k, v in sorted(data.items()) if k not in _VOLATILE_ARGUMENTS}


def prepare_fit(trainer: Any, settings: HFAuditSettings, stock: type) -> PreparedFit:
    """Everything checked before training, on the Trainer's own model and optimizer (the
    ones ``train()`` built); ``stock``: ``transformers.Trainer``."""
    from privacy_gate.mlflow.logging import active_run_location

    args, model, optimizer = trainer.args, trainer.model, trainer.optimizer
    factory = fresh_model_factory(trainer, settings)
    keys = forward_keys(model)
    train = trainer.train_dataset
    if train is None:
        raise InputError(f"{OWNER} needs the Trainer's train_dataset. Got None instead.")
    train_x, train_y, key = dataset_tensors(train, "train_dataset", settings.input_key, keys)
    holdout_x, holdout_y, _ = dataset_tensors(_holdout(trainer, settings), "holdout", key, keys)
    patient_ids, columns = pool_metadata(
        settings.patient_ids, settings.subgroups, len(train_x), len(holdout_x), OWNER
    )
    data = AuditData(
        train_inputs=train_x,
        train_labels=train_y,
        holdout_inputs=holdout_x,
        holdout_labels=holdout_y,
        task=settings.task,
        patient_ids=patient_ids,
        columns=columns,
    )
    inputs, labels = data.pool()
    check_model_outputs(
        LogitsModel(model, key), inputs, labels, data.task, f"The model ({type(model).__name__})"
    )
    world = int(args.world_size)
    recipe, problems = map_recipe(args, task=settings.task, world_size=world)
    problems += trainer_problems(trainer, stock)
    mismatch = optimizer_problem(optimizer, args)
    if mismatch is not None:
        raise InputError(
            f"{OWNER} cannot train reference models like this candidate: {mismatch}. HINT: "
            "name the optimizer in TrainingArguments (optim=...) or pass "
            "optimizer_cls_and_kwargs=... to the Trainer instead of an optimizer instance."
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = loss_problem(
        model, train_x[:_PROBE].to(device), train_y[:_PROBE].to(device), key, recipe.loss
    )
    if probe is not None:
        problems.append(probe)
    if world > 1 and problems:
        raise ConfigError(
            f"{OWNER} under multi-process training audits on the main process alone, where a "
            f"Trainer per reference model cannot run, but this fit needs one: "
            f"{'; '.join(problems)}. HINT: audit after training in one process, or use a "
            "constant learning rate without warmup, whole epochs, optim adamw_torch or sgd "
            "without weight decay."
        )
    return PreparedFit(
        trainer=trainer,
        factory=factory,
        data=data,
        input_key=key,
        recipe=recipe,
        problems=tuple(problems),
        arguments=_arguments(args),
        mlflow_run=active_run_location(),
    )
