"""The audit pool of a Hugging Face fit, and the model as the audit scores it.

Hugging Face datasets yield one dict per example. Supported: examples with ONE input
tensor (``input_key``: ``pixel_values``, ``input_values``, ``input_ids``, ``x`` or
``inputs`` when not named) plus the label (``labels``, or ``label`` as
``default_data_collator`` renames it), of one shape for every example. A key the model's
``forward`` also takes (an ``attention_mask`` of padded text, say) is refused: the
reference models and the scores would see other inputs than the candidate did.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from privacy_gate.errors import InputError

__all__ = [
    "INPUT_KEYS",
    "LABEL_KEYS",
    "ExampleDataset",
    "LogitsModel",
    "dataset_tensors",
    "find_input_key",
    "forward_keys",
]

INPUT_KEYS = ("pixel_values", "input_values", "input_features", "input_ids", "x", "inputs")
"""The input keys looked for, in this order, when ``input_key`` is not given."""
LABEL_KEYS = ("labels", "label")


class LogitsModel(nn.Module):
    """A Hugging Face model as the audit scores and trains it: one input tensor to logits
    (``model(**{input_key: x}).logits``). The wrapped model is ``self.model``."""

    def __init__(self, model: nn.Module, input_key: str) -> None:
        super().__init__()
        self.model = model
        self.input_key = input_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.model(**{self.input_key: x})
        logits = output.logits if hasattr(output, "logits") else output
        if not isinstance(logits, torch.Tensor):
            raise InputError(
                f"The model ({type(self.model).__name__}) returns {type(output).__name__} "
                "without a 'logits' tensor. HINT: the audit scores classification models "
                "whose output has .logits."
            )
        return logits


class ExampleDataset(Dataset[dict[str, torch.Tensor]]):
    """Pool records as the examples a Trainer collates: ``{input_key: x, "labels": y}``."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, input_key: str) -> None:
        self.inputs, self.labels, self.input_key = inputs, labels, input_key

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {self.input_key: self.inputs[index], "labels": self.labels[index]}


def forward_keys(model: nn.Module) -> set[str]:
    """The keyword arguments ``model.forward`` names."""
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _example(dataset: Any, index: int, name: str) -> Mapping[str, Any]:
    example = dataset[index]
    if not isinstance(example, Mapping):
        raise InputError(
            f"The {name} of the audit must yield one dict per example (as Hugging Face "
            f"datasets do). Got {type(example).__name__} instead. HINT: yield "
            "{'pixel_values' (or your input key): tensor, 'labels': label}."
        )
    return example


def find_input_key(example: Mapping[str, Any], given: str | None, name: str) -> str:
    """The example's input key: ``given``, else the first of `INPUT_KEYS` it has."""
    if given is not None:
        if given not in example:
            raise InputError(
                f"The 'input_key' parameter of PrivacyAuditCallback must be a key of the "
                f"{name}'s examples {sorted(example)}. Got {given!r} instead."
            )
        return given
    for key in INPUT_KEYS:
        if key in example:
            return key
    raise InputError(
        f"PrivacyAuditCallback found none of the input keys {list(INPUT_KEYS)} in the "
        f"{name}'s examples (keys {sorted(example)}). HINT: pass input_key='<your key>'."
    )


def _label_key(example: Mapping[str, Any], name: str) -> str:
    for key in LABEL_KEYS:
        if key in example:
            return key
    raise InputError(
        f"The {name}'s examples have no label (keys {sorted(example)}). HINT: the audit "
        f"scores the model's confidence in each record's label: add one of {list(LABEL_KEYS)}."
    )


def dataset_tensors(
    dataset: Any,
    name: str,
    input_key: str | None,
    model_keys: set[str],
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Inputs ``(n, ...)``, labels ``(n, ...)`` and the input key of an indexable dataset
    of dict examples; ``model_keys``: what the model's forward takes."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise InputError(
            f"The {name} of the audit must be indexable with a length (a torch map-style "
            f"Dataset or a datasets.Dataset). Got {type(dataset).__name__} instead. HINT: "
            "iterable (streaming) datasets are not supported."
        )
    n = len(dataset)
    if n == 0:
        raise InputError(f"The {name} of the audit is empty.")
    first = _example(dataset, 0, name)
    key = find_input_key(first, input_key, name)
    label = _label_key(first, name)
    extra = sorted(k for k in first if k not in (key, label) and k in model_keys)
    if extra:
        raise InputError(
            f"The {name}'s examples carry {extra} besides the input {key!r}, and the model's "
            "forward takes them: the audit trains and scores models on one input tensor, "
            "so they would see other inputs than the candidate did. HINT: drop those "
            "columns when they are constant (e.g. an all-ones attention_mask of unpadded, "
            "equal-length inputs), or audit with privacy_gate.training.run_audit and a "
            "model that takes one tensor."
        )
    inputs, labels = [], []
    for i in range(n):
        example = first if i == 0 else _example(dataset, i, name)
        inputs.append(torch.as_tensor(example[key]))
        labels.append(torch.as_tensor(example[label]))
    try:
        return torch.stack(inputs), torch.stack(labels), key
    except RuntimeError as exc:
        raise InputError(
            f"The {name}'s examples have inputs of different shapes ({exc}). HINT: pad or "
            "resize them to one shape in the dataset (the audit stacks records)."
        ) from None
