"""The candidate's recipe, read from the Trainer and the LightningModule.

The batched fast path trains reference models with a `Recipe`: the epochs and batch size
of the fit, the optimizer class and hyperparameters of ``configure_optimizers()``, the
gradient-norm clipping of the Trainer and the module's declared ``loss_fn``. It assumes
``training_step`` computes ``loss_fn(self(x), y)`` on ``(x, y)`` batches. Whatever a
`Recipe` cannot express (a learning-rate scheduler, another optimizer or loss, mixed
precision, gradient accumulation, ``max_steps``, a model that cannot be batched) sends
the audit to the sequential backend, which trains each reference model with a real
Lightning Trainer; the reason is logged and kept in the report.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_callbacks._settings import OWNER
from privacy_gate.errors import InputError, PrivacyGateError
from privacy_gate.signals import Task
from privacy_gate.training.batched import batching_problem
from privacy_gate.training.recipe import Loss, Optimizer, Recipe

__all__ = ["TrainerSettings", "extract_recipe", "module_factory"]

_OPTIMIZERS: dict[type[torch.optim.Optimizer], Optimizer] = {
    torch.optim.SGD: Optimizer.SGD,
    torch.optim.Adam: Optimizer.ADAM,
    torch.optim.AdamW: Optimizer.ADAMW,
}


@dataclass(frozen=True, kw_only=True)
class TrainerSettings:
    """What reference-model Trainers copy from the user's Trainer."""

    max_epochs: int | None
    max_steps: int
    precision: str
    gradient_clip_val: float | None
    gradient_clip_algorithm: str | None
    accumulate_grad_batches: int
    limit_train_batches: int | float
    accelerator: str

    @classmethod
    def of(cls, trainer: Any) -> TrainerSettings:
        algorithm = trainer.gradient_clip_algorithm
        device = trainer.strategy.root_device.type
        epochs = trainer.max_epochs
        if trainer.should_stop and 0 < trainer.current_epoch < (epochs or 0):
            epochs = trainer.current_epoch  # stopped early: reference models train as long
        return cls(
            max_epochs=epochs,
            max_steps=int(trainer.max_steps),
            precision=str(trainer.precision),
            gradient_clip_val=(
                None if trainer.gradient_clip_val is None else float(trainer.gradient_clip_val)
            ),
            gradient_clip_algorithm=(
                None if algorithm is None else str(getattr(algorithm, "value", algorithm))
            ),
            accumulate_grad_batches=int(trainer.accumulate_grad_batches),
            limit_train_batches=trainer.limit_train_batches,
            accelerator={"cuda": "gpu", "mps": "mps"}.get(device, "cpu"),
        )

    def trainer_kwargs(self) -> dict[str, Any]:
        """Trainer arguments of a reference model (the caller adds the quiet ones)."""
        return {
            "max_epochs": self.max_epochs,
            "max_steps": self.max_steps,
            "precision": self.precision,
            "gradient_clip_val": self.gradient_clip_val,
            "gradient_clip_algorithm": self.gradient_clip_algorithm,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "limit_train_batches": self.limit_train_batches,
            "accelerator": self.accelerator,
            "devices": 1,
        }


def module_factory(
    module: Any, model_factory: Callable[[], nn.Module] | None
) -> Callable[[], nn.Module]:
    """Builds fresh, untrained modules: the user's factory, else the module's class
    called with its saved hyperparameters. Raises (before training) when that fails."""
    factory: Callable[[], nn.Module]
    if model_factory is not None:
        factory = model_factory
    else:
        module_class: Callable[..., nn.Module] = type(module)
        factory = functools.partial(module_class, **dict(module.hparams))
    try:
        with torch.random.fork_rng(devices=[]):  # the fit's own randomness stays as it was
            fresh = factory()
    except Exception as exc:
        raise InputError(
            f"{OWNER} cannot build a fresh {type(module).__name__} for the reference models "
            f"({type(exc).__name__}: {exc}). HINT: call self.save_hyperparameters() in its "
            "__init__, or pass model_factory=<callable returning an untrained module>."
        ) from exc
    base = _lightning_module_class(module)
    if base is not None and not isinstance(fresh, base):
        raise InputError(
            f"The 'model_factory' parameter of {OWNER} must return a {base.__module__}."
            f"{base.__qualname__}, like the module being fit: the reference models train "
            f"with its configure_optimizers and training_step. Got {type(fresh).__name__} "
            "instead. HINT: return the LightningModule that wraps the network, untrained."
        )
    if not isinstance(fresh, nn.Module):
        raise InputError(
            f"The 'model_factory' parameter of {OWNER} must return an nn.Module. Got "
            f"{type(fresh).__name__} instead."
        )
    return factory


def _lightning_module_class(module: Any) -> type | None:
    """The ``LightningModule`` base of the module being fit (either namespace)."""
    for cls in type(module).__mro__:
        if cls.__name__ == "LightningModule" and cls.__module__.endswith("core.module"):
            return cls
    return None


def _unpack_optimizers(configured: Any) -> tuple[Any, str | None]:
    """The single optimizer of ``configure_optimizers()``'s output, or why not."""
    scheduler_reason = "configure_optimizers() returns a learning-rate scheduler"
    if isinstance(configured, torch.optim.Optimizer):
        return configured, None
    if isinstance(configured, dict):
        if configured.get("lr_scheduler") is not None:
            return None, scheduler_reason
        return configured.get("optimizer"), None
    if isinstance(configured, list | tuple):
        items = list(configured)
        if len(items) == 2 and all(isinstance(i, list | tuple) for i in items):
            if items[1]:
                return None, scheduler_reason
            items = list(items[0])
        if len(items) == 1:
            return _unpack_optimizers(items[0])
        return None, f"configure_optimizers() returns {len(items)} optimizers"
    return None, f"configure_optimizers() returns {type(configured).__name__}"


def _optimizer_recipe(module: nn.Module) -> tuple[dict[str, Any], str | None]:
    configure = getattr(module, "configure_optimizers", None)
    if configure is None:
        return {}, "the module has no configure_optimizers()"
    try:
        configured = configure()
    except Exception as exc:
        return {}, f"configure_optimizers() of a fresh module failed ({exc})"
    optimizer, reason = _unpack_optimizers(configured)
    if reason is not None:
        return {}, reason
    kind = _OPTIMIZERS.get(type(optimizer))
    if kind is None:
        return {}, f"the optimizer {type(optimizer).__name__} is not SGD, Adam or AdamW"
    if len(optimizer.param_groups) != 1:
        return {}, "the optimizer has several parameter groups"
    group = optimizer.param_groups[0]
    unsupported = [
        name
        for name, default in (
            ("nesterov", False),
            ("dampening", 0),
            ("amsgrad", False),
            ("maximize", False),
        )
        if group.get(name, default) != default
    ]
    if unsupported:
        return {}, f"the optimizer uses {', '.join(unsupported)}"
    recipe: dict[str, Any] = {
        "optimizer": kind,
        "learning_rate": float(group["lr"]),
        "weight_decay": float(group.get("weight_decay", 0.0)),
    }
    if kind is Optimizer.SGD:
        recipe["momentum"] = float(group.get("momentum", 0.0))
    else:
        recipe["betas"] = tuple(float(b) for b in group["betas"])
        recipe["eps"] = float(group["eps"])
    return recipe, None


def _loss(module: nn.Module, task: Task) -> tuple[Loss, str | None]:
    default = Loss.CROSS_ENTROPY if task is Task.MULTICLASS else Loss.BINARY_CROSS_ENTROPY
    loss_fn = getattr(module, "loss_fn", None)
    if loss_fn is None:
        return default, None
    if loss_fn is F.cross_entropy:
        return Loss.CROSS_ENTROPY, None
    if loss_fn is F.binary_cross_entropy_with_logits:
        return Loss.BINARY_CROSS_ENTROPY, None
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        plain = (
            loss_fn.weight is None and loss_fn.label_smoothing == 0 and loss_fn.reduction == "mean"
        )
        return Loss.CROSS_ENTROPY, None if plain else "loss_fn has weights or label smoothing"
    if isinstance(loss_fn, nn.BCEWithLogitsLoss):
        plain = loss_fn.weight is None and loss_fn.pos_weight is None
        plain = plain and loss_fn.reduction == "mean"
        return Loss.BINARY_CROSS_ENTROPY, None if plain else "loss_fn has weights"
    return default, f"loss_fn {type(loss_fn).__name__} is not cross-entropy or BCE with logits"


def _trainer_problems(settings: TrainerSettings) -> list[str]:
    problems = []
    if settings.max_epochs is None or settings.max_epochs < 1:
        problems.append("the Trainer has no max_epochs")
    if settings.max_steps != -1:
        problems.append(f"the Trainer stops at max_steps={settings.max_steps}")
    if settings.precision not in ("32-true", "32"):
        problems.append(f"the Trainer trains at precision {settings.precision!r}")
    if settings.accumulate_grad_batches != 1:
        problems.append(f"accumulate_grad_batches={settings.accumulate_grad_batches}")
    if settings.gradient_clip_val is not None and settings.gradient_clip_algorithm == "value":
        problems.append("gradients are clipped by value")
    limit = settings.limit_train_batches
    if not isinstance(limit, float) or limit != 1.0:
        problems.append(f"limit_train_batches={settings.limit_train_batches}")
    return problems


def extract_recipe(
    settings: TrainerSettings,
    loader: DataLoader[Any],
    fresh: nn.Module,
    task: Task,
    *,
    batch_size: int | None = None,
    world_size: int = 1,
) -> tuple[Recipe, str | None]:
    """The candidate's `Recipe` and why the batched fast path cannot use it (None: it can).

    The recipe is returned either way: it keys the cache of finished reference models.
    ``batch_size`` overrides the loader's (DP-SGD replaced the loader by a Poisson-sampled
    one whose expected batch size is the original loader's). Under multi-process training
    (``world_size`` ranks) each step averages the gradients of one loader batch per rank:
    the recipe's batch is the loader's times ``world_size``.
    """
    problems = _trainer_problems(settings)
    if batch_size is None:
        batch_size = loader.batch_size
        if batch_size is None:
            batch_size = getattr(loader.batch_sampler, "batch_size", None)
            problems.append("the train DataLoader uses a custom batch sampler")
        if isinstance(batch_size, int):
            batch_size *= world_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(
            f"{OWNER} cannot read the batch size of the train DataLoader. HINT: build it "
            "with DataLoader(dataset, batch_size=...)."
        )
    if loader.drop_last:
        problems.append("the train DataLoader drops the last batch")
    optimizer, reason = _optimizer_recipe(fresh)
    if reason:
        problems.append(reason)
    loss, reason = _loss(fresh, task)
    if reason:
        problems.append(reason)
    problem = batching_problem(fresh)
    if problem:
        problems.append(problem)
    clip = settings.gradient_clip_val if settings.gradient_clip_algorithm != "value" else None
    try:
        recipe = Recipe(
            epochs=max(settings.max_epochs or 1, 1),
            batch_size=batch_size,
            max_grad_norm=clip or None,
            loss=loss,
            **optimizer,
        )
    except PrivacyGateError as exc:
        problems.append(f"the recipe is not valid ({exc})")
        recipe = Recipe(epochs=max(settings.max_epochs or 1, 1), batch_size=batch_size, loss=loss)
    return recipe, "; ".join(problems) or None
