"""The Hugging Face recipe: `TrainingArguments` mapped exactly onto a `Recipe`, or the
reasons each reference model trains with its own Trainer (real arguments, real values)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from privacy_gate.integrations.transformers._recipe import (
    loss_problem,
    map_recipe,
    optimizer_problem,
    trainer_problems,
)
from privacy_gate.integrations.transformers._reference import reference_arguments
from privacy_gate.signals import Task
from privacy_gate.training.recipe import Loss, Optimizer, Precision, Recipe

EXACT: dict[str, Any] = {
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "learning_rate": 0.01,
    "lr_scheduler_type": "constant",
    "optim": "adamw_torch",
}


def arguments(tmp_path: Any, **changes: Any) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", **{**EXACT, **changes}
    )


def test_an_exact_recipe_maps_field_by_field(tmp_path: Any) -> None:
    recipe, problems = map_recipe(arguments(tmp_path), task=Task.MULTICLASS)
    assert problems == []
    assert recipe == Recipe(
        epochs=2,
        batch_size=16,
        optimizer=Optimizer.ADAMW,
        learning_rate=0.01,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        max_grad_norm=1.0,  # HF's default clips
        loss=Loss.CROSS_ENTROPY,
        precision=Precision.FLOAT32,
    )


def test_the_defaults_take_the_trainer_path_for_the_linear_schedule(tmp_path: Any) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    recipe, problems = map_recipe(args, task=Task.MULTICLASS)
    assert problems == ["lr_scheduler_type='linear' changes the learning rate per step"]
    assert (recipe.epochs, recipe.batch_size, recipe.learning_rate) == (3, 8, 5e-5)
    assert recipe.max_grad_norm == 1.0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"lr_scheduler_type": "cosine"}, "lr_scheduler_type='cosine'"),
        ({"warmup_steps": 5}, "warmup"),
        ({"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 3}, "warmup"),
        ({"max_steps": 40}, "max_steps=40"),
        ({"num_train_epochs": 1.5}, "num_train_epochs=1.5"),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps=4"),
        ({"weight_decay": 0.01}, "exempts biases"),
        ({"label_smoothing_factor": 0.1}, "label_smoothing_factor=0.1"),
        ({"optim": "adafactor"}, "optim='adafactor'"),
        ({"optim": "sgd", "optim_args": "momentum=0.9"}, "optim_args"),
        ({"dataloader_drop_last": True}, "drops the last batch"),
        ({"neftune_noise_alpha": 5.0}, "neftune"),
        ({"auto_find_batch_size": True}, "auto_find_batch_size"),
    ],
)
def test_what_a_recipe_cannot_hold_is_named(
    tmp_path: Any, changes: dict[str, Any], reason: str
) -> None:
    _, problems = map_recipe(arguments(tmp_path, **changes), task=Task.MULTICLASS)
    assert len(problems) == 1 and reason in problems[0], problems


def test_sgd_no_clipping_and_the_global_batch(tmp_path: Any) -> None:
    args = arguments(tmp_path, optim="sgd", max_grad_norm=0.0, per_device_train_batch_size=8)
    recipe, problems = map_recipe(args, task=Task.BINARY, world_size=4)
    assert problems == []
    assert recipe.optimizer is Optimizer.SGD and recipe.momentum == 0.0
    assert recipe.max_grad_norm is None
    assert recipe.batch_size == 32  # 8 per device x 4 processes
    assert recipe.loss is Loss.BINARY_CROSS_ENTROPY


def test_a_constant_schedule_with_zero_warmup_is_exact(tmp_path: Any) -> None:
    args = arguments(tmp_path, lr_scheduler_type="constant_with_warmup", warmup_steps=0)
    assert map_recipe(args, task=Task.MULTICLASS)[1] == []


class Tiny(nn.Module):
    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.smoothing = smoothing

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.net(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def test_the_loss_probe_compares_the_models_own_loss() -> None:
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    assert loss_problem(Tiny(), x, y, "x", Loss.CROSS_ENTROPY) is None
    problem = loss_problem(Tiny(smoothing=0.2), x, y, "x", Loss.CROSS_ENTROPY)
    assert problem is not None and "is not the recipe's cross_entropy" in problem


def test_a_trainer_subclass_and_an_optimizer_instance(tmp_path: Any) -> None:
    class Custom(Trainer):
        pass

    args = arguments(tmp_path)
    assert trainer_problems(Trainer(model=Tiny(), args=args), Trainer) == []
    problems = trainer_problems(Custom(model=Tiny(), args=args), Trainer)
    assert problems and "Custom" in problems[0]
    model = Tiny()
    assert optimizer_problem(torch.optim.AdamW(model.parameters(), lr=0.01), args) is None
    problem = optimizer_problem(torch.optim.SGD(model.parameters(), lr=0.01), args)
    assert problem is not None and "SGD(lr=0.01)" in problem


def test_reference_arguments_change_only_what_must_differ(tmp_path: Any) -> None:
    args = arguments(tmp_path, lr_scheduler_type="linear", warmup_steps=2)
    copied = reference_arguments(args, output_dir=str(tmp_path / "ref"), seed=7)
    assert (copied.seed, copied.output_dir, copied.report_to) == (7, str(tmp_path / "ref"), [])
    assert copied.save_strategy == "no" and copied.logging_strategy == "no"
    same = ("learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs",
            "per_device_train_batch_size", "max_grad_norm", "optim", "adam_beta2")  # fmt: skip
    assert all(getattr(copied, name) == getattr(args, name) for name in same)
    assert args.seed == 42 and args.output_dir == str(tmp_path)  # the candidate's, unchanged
