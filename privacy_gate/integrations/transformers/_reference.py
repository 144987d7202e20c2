"""Train one reference model with its own fresh Hugging Face Trainer (the path taken when
the candidate's `TrainingArguments` do not map exactly onto a `Recipe`).

Each reference model gets a Trainer of the candidate's own class, built from a copy of
the candidate's arguments with only what must differ changed: ``seed`` (the reference
model's; ``data_seed`` cleared so the data order follows it), ``output_dir`` (a temporary
folder), no reporting, saving, evaluation, logging or Hub push, and no callbacks but the
Trainer's defaults. The data collator, ``compute_loss_func`` and
``optimizer_cls_and_kwargs`` are the candidate's. The model comes from the factory with
torch's generator seeded by the reference model's seed, as `run_audit`'s own loops do.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.integrations.transformers._data import ExampleDataset, LogitsModel
from privacy_gate.training.quiet import quiet_loggers
from privacy_gate.training.reference import TrainFunction

__all__ = ["make_train_fn", "reference_arguments", "reference_trainer"]

_QUIET = ("transformers.trainer", "transformers.training_args", "accelerate")


def reference_arguments(args: Any, *, output_dir: str, seed: int) -> Any:
    """A copy of the candidate's `TrainingArguments` for one reference model: the same
    recipe; its own seed and output folder; nothing reported, saved, evaluated or pushed."""
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    copied = copy.deepcopy(args)
    changes: dict[str, Any] = {
        "output_dir": output_dir,
        "seed": seed,
        "data_seed": None,
        "report_to": [],
        "save_strategy": SaveStrategy.NO,
        "eval_strategy": IntervalStrategy.NO,
        "logging_strategy": IntervalStrategy.NO,
        "load_best_model_at_end": False,
        "push_to_hub": False,
        "eval_on_start": False,
        "do_eval": False,
        "disable_tqdm": True,
        "resume_from_checkpoint": None,
        "enable_jit_checkpoint": False,
    }
    for name, value in changes.items():
        if hasattr(copied, name):
            setattr(copied, name, value)
    return copied


def reference_trainer(trainer: Any, model: nn.Module, args: Any, dataset: ExampleDataset) -> Any:
    """A fresh Trainer of ``trainer``'s class for one reference model (quiet)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    built = type(trainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=trainer.data_collator,
        compute_loss_func=getattr(trainer, "compute_loss_func", None),
        optimizer_cls_and_kwargs=getattr(trainer, "optimizer_cls_and_kwargs", None),
    )
    for callback in (PrinterCallback, ProgressCallback):
        built.remove_callback(callback)
    return built


def make_train_fn(
    trainer: Any,
    factory: Callable[[], nn.Module],
    pool: tuple[torch.Tensor, torch.Tensor],
    input_key: str,
) -> TrainFunction:
    """``train_fn(subset, seed)``: a fresh model trained by its own Trainer on the pool
    records ``subset``, returned as the audit scores it (`LogitsModel`)."""
    inputs, labels = pool

    def train(subset: NDArray[np.intp], seed: int) -> nn.Module:
        index = torch.as_tensor(subset, dtype=torch.long)
        torch.manual_seed(seed)  # the initial weights (a new head) depend only on seed
        model = factory()
        with tempfile.TemporaryDirectory(prefix="privacy-gate-reference-") as tmp:
            args = reference_arguments(trainer.args, output_dir=tmp, seed=seed)
            dataset = ExampleDataset(inputs[index], labels[index], input_key)
            with _quiet():
                built = reference_trainer(trainer, model, args, dataset)
                built.train()
        return LogitsModel(built.model, input_key)

    return train


def _quiet() -> contextlib.AbstractContextManager[None]:
    """Silence the per-Trainer info lines while dozens of reference models train."""
    return quiet_loggers(_QUIET, (r".*dataloader.*",))
