"""Frozen weights held once for all K models of an ensemble.

A fine-tune's frozen weights (a LoRA model's whole base, a pretrained trunk) are the same
in every reference model when the factory loads them from one file. Held K times they
would make an ensemble's memory K x the model; held once it is one model plus K x the
trainable part (the adapters). `share_frozen_weights` ties a new model's equal frozen
parameters to the first model's, as each model is built, so K full copies never exist
at once; `split_state` then gives the ensemble its stacked trainable rows, the stacked
per-model constants and the shared tensors (passed to ``vmap`` unbatched).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["EnsembleState", "share_frozen_weights", "shared_note", "split_state"]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), leaf


def share_frozen_weights(first: nn.Module, model: nn.Module) -> int:
    """Make ``model``'s frozen parameters that equal ``first``'s the same tensors; the
    number of values now held once (0 when the factory initialises them per seed)."""
    reference = dict(first.named_parameters())
    tied = 0
    for name, param in list(model.named_parameters()):
        ref = reference.get(name)
        if (
            ref is None
            or ref is param
            or param.requires_grad
            or ref.requires_grad
            or ref.shape != param.shape
            or ref.dtype != param.dtype
            or ref.device != param.device
            or not torch.equal(ref, param)
        ):
            continue
        owner, leaf = _owner(model, name)
        setattr(owner, leaf, ref)
        tied += param.numel()
    return tied


@dataclass(frozen=True)
class EnsembleState:
    """What an ensemble needs of its K models' tensors.

    ``trainable``: ``(K, *shape)`` stacks of the trainable parameters (in
    ``named_parameters`` order); ``constants``: ``(K, *shape)`` stacks of the frozen
    parameters that differ between models and of every buffer; ``shared``: the frozen
    parameters every model holds alike, once.
    """

    trainable: dict[str, torch.Tensor]
    constants: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]


def split_state(models: list[nn.Module]) -> EnsembleState:
    """The models' tensors, stacked where they differ and once where they cannot.

    Buffers are always stacked: they are small, and BatchNorm's move per model.
    """
    states = [dict(m.named_parameters()) for m in models]
    first = states[0]
    trainable: dict[str, torch.Tensor] = {}
    constants: dict[str, torch.Tensor] = {}
    shared: dict[str, torch.Tensor] = {}
    for name, param in first.items():
        column = [state[name] for state in states]
        if param.requires_grad:
            trainable[name] = torch.stack([p.detach() for p in column])
        elif all(p is param or torch.equal(p, param) for p in column[1:]):
            shared[name] = param.detach()
        else:
            constants[name] = torch.stack([p.detach() for p in column])
    buffers = [dict(m.named_buffers()) for m in models]
    for name in buffers[0]:
        constants[name] = torch.stack([b[name].detach() for b in buffers])
    return EnsembleState(trainable, constants, shared)


def shared_note(models: list[nn.Module]) -> str | None:
    """The report's line on the frozen weights every model holds as one tensor (tied by
    `share_frozen_weights`), or None when there are none."""
    first = dict(models[0].named_parameters())
    others = [dict(m.named_parameters()) for m in models[1:]]
    held_once = sum(
        p.numel() for n, p in first.items()
        if not p.requires_grad and all(other[n] is p for other in others)
    )  # fmt: skip
    if not held_once:
        return None
    trained = sum(p.numel() for p in first.values() if p.requires_grad)
    return (
        f"{held_once} frozen parameters held once for all {len(models)} models "
        f"({trained} trainable per model)"
    )
