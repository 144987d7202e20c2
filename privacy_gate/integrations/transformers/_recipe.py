"""The candidate's recipe, read from a Hugging Face Trainer and its `TrainingArguments`.

A faithful recipe or a refusal, never a silently different one. Where the arguments map
EXACTLY onto a `Recipe` (a constant learning rate without warmup, whole epochs, AdamW or
plain SGD without weight decay, no label smoothing, no gradient accumulation, the stock
``Trainer`` and the model's own loss equal to the recipe's), the reference models train
with privacy-gate's loops (batched when the model allows). Anything else, HF's default
*linear* schedule included, trains each reference model with its own fresh Trainer of
the candidate's class built from a copy of the same arguments (`_reference`); the
reasons are logged and kept in the report (``audit.training.fallback_reason``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from privacy_gate.signals import Task
from privacy_gate.training.recipe import Loss, Optimizer, Precision, Recipe
from privacy_gate.training.steps import compute_loss

__all__ = ["loss_problem", "map_recipe", "optimizer_problem", "trainer_problems"]

_ADAMW = ("adamw_torch", "adamw_torch_fused")
_CONSTANT = ("constant", "constant_with_warmup")


def _value(setting: Any) -> Any:
    """An ``ExplicitEnum`` field's string (HF converts them in ``__post_init__``)."""
    return getattr(setting, "value", setting)


def _epochs(args: Any, problems: list[str]) -> int:
    epochs = float(args.num_train_epochs)
    if int(args.max_steps) > 0:
        problems.append(f"max_steps={args.max_steps} fixes the number of steps")
    elif epochs < 1 or not epochs.is_integer():
        problems.append(f"num_train_epochs={args.num_train_epochs} is not a whole number")
    return max(1, math.ceil(epochs))


def _optimizer(args: Any, problems: list[str]) -> dict[str, Any]:
    optim = _value(args.optim)
    if args.optim_args:
        problems.append(f"optim_args={args.optim_args!r}")
    if float(args.weight_decay) > 0:
        problems.append(
            f"weight_decay={args.weight_decay}: the Trainer exempts biases and norm weights "
            "from weight decay, a recipe decays every parameter"
        )
    if optim in _ADAMW:
        return {
            "optimizer": Optimizer.ADAMW,
            "betas": (float(args.adam_beta1), float(args.adam_beta2)),
            "eps": float(args.adam_epsilon),
        }
    if optim == "sgd":
        return {"optimizer": Optimizer.SGD}
    problems.append(f"optim={optim!r} is not {' , '.join(_ADAMW)} or sgd")
    return {"optimizer": Optimizer.ADAMW}


def _precision(args: Any) -> Precision:
    if args.fp16:
        return Precision.FP16_MIXED
    if args.bf16:
        return Precision.BF16_MIXED
    return Precision.FLOAT32


def map_recipe(args: Any, *, task: Task, world_size: int = 1) -> tuple[Recipe, list[str]]:
    """The `Recipe` of ``args`` (a `TrainingArguments`) and why it is not exact (empty:
    it is). The recipe is returned either way: it keys the store of finished models.

    The batch is ``per_device_train_batch_size * gradient_accumulation_steps *
    world_size`` (the examples behind one optimizer step); ``max_grad_norm`` > 0 clips
    the gradient norm as the Trainer does (its default, 1.0, clips).
    """
    problems: list[str] = []
    scheduler = _value(args.lr_scheduler_type)
    warmup = float(args.warmup_steps or 0) + float(getattr(args, "warmup_ratio", 0) or 0)
    if scheduler not in _CONSTANT:
        problems.append(f"lr_scheduler_type={scheduler!r} changes the learning rate per step")
    elif warmup > 0:
        problems.append(f"a learning-rate warmup (warmup_steps={args.warmup_steps})")
    if args.lr_scheduler_kwargs:
        problems.append(f"lr_scheduler_kwargs={args.lr_scheduler_kwargs!r}")
    epochs = _epochs(args, problems)
    accumulation = int(args.gradient_accumulation_steps)
    if accumulation != 1:
        problems.append(f"gradient_accumulation_steps={accumulation}")
    optimizer = _optimizer(args, problems)
    if float(args.label_smoothing_factor) > 0:
        problems.append(f"label_smoothing_factor={args.label_smoothing_factor}")
    if args.dataloader_drop_last:
        problems.append("dataloader_drop_last=True drops the last batch")
    if args.neftune_noise_alpha is not None:
        problems.append(f"neftune_noise_alpha={args.neftune_noise_alpha} adds embedding noise")
    if getattr(args, "auto_find_batch_size", False):
        problems.append("auto_find_batch_size=True may train with a smaller batch")
    sampling = _value(getattr(args, "train_sampling_strategy", "random"))
    if sampling != "random":
        problems.append(f"train_sampling_strategy={sampling!r}")
    clip = float(args.max_grad_norm or 0)
    recipe = Recipe(
        epochs=epochs,
        batch_size=int(args.per_device_train_batch_size) * accumulation * world_size,
        learning_rate=float(args.learning_rate),
        max_grad_norm=clip if clip > 0 else None,
        loss=Loss.CROSS_ENTROPY if task is Task.MULTICLASS else Loss.BINARY_CROSS_ENTROPY,
        precision=_precision(args),
        **optimizer,
    )
    return recipe, problems


def trainer_problems(trainer: Any, stock_class: type) -> list[str]:
    """What of the Trainer itself a `Recipe` cannot hold: a subclass (it may override
    ``compute_loss`` or ``training_step``), a ``compute_loss_func``, an optimizer class."""
    problems = []
    if type(trainer) is not stock_class:
        problems.append(
            f"the Trainer is a {type(trainer).__qualname__}, whose training steps may differ "
            "from transformers.Trainer's"
        )
    if getattr(trainer, "compute_loss_func", None) is not None:
        problems.append("the Trainer has a compute_loss_func")
    if getattr(trainer, "optimizer_cls_and_kwargs", None) is not None:
        problems.append("the Trainer has optimizer_cls_and_kwargs")
    return problems


def optimizer_problem(optimizer: Any, args: Any) -> str | None:
    """Why the optimizer the Trainer built is not the one its arguments name (an instance
    given as ``optimizers=(...)``, which reference models cannot copy); None when it is."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    optim = _value(args.optim)
    expected = {**dict.fromkeys(_ADAMW, torch.optim.AdamW), "sgd": torch.optim.SGD}.get(optim)
    if expected is None or inner is None:
        return None  # another optimizer: trained by the Trainer of each reference model
    group = inner.param_groups[0] if inner.param_groups else {}
    if type(inner) is not expected or not math.isclose(
        float(group.get("lr", -1)), float(args.learning_rate), rel_tol=1e-9
    ):
        return (
            f"the Trainer trains with {type(inner).__name__}(lr={group.get('lr')}), not the "
            f"{expected.__name__}(lr={args.learning_rate}) its arguments name"
        )
    return None


def loss_problem(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, key: str, loss: Loss
) -> str | None:
    """Whether the model's own loss (what the Trainer minimises) is the recipe's ``loss``
    of its logits, on a few records in eval mode; None when it is (to float tolerance)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(**{key: x, "labels": y})
    except Exception as exc:
        return f"the model's forward with labels failed ({type(exc).__name__}: {exc})"
    finally:
        model.train(was_training)
    own = getattr(output, "loss", None)
    logits = getattr(output, "logits", None)
    if own is None or logits is None:
        return "the model's output has no loss or no logits"
    try:
        expected = compute_loss(logits, y, loss)
    except Exception as exc:
        return f"the recipe's {loss.value} does not apply to the logits ({exc})"
    if not torch.allclose(own.float(), expected.float(), rtol=1e-4, atol=1e-6):
        return (
            f"the model's own loss ({float(own):.6g}) is not the recipe's {loss.value} of its "
            f"logits ({float(expected):.6g})"
        )
    return None
