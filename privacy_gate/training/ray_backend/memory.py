"""How much memory one Ray task needs, and how many models a task may train within it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from privacy_gate.errors import (
    ConfigError,
)
from privacy_gate.training.ray_backend.options import RayOptions
from privacy_gate.training.recipe import Optimizer, Recipe
from privacy_gate.training.steps import ModelFactory, init_model

#: Memory of a Ray worker process with torch imported, before any data (CPU tasks).
WORKER_BASE_BYTES = 768 * 2**20


# Memory: how many models one task trains at once.


def training_bytes_per_model(factory: ModelFactory, inputs: torch.Tensor, recipe: Recipe) -> int:
    """Estimated memory one model adds to a batched ensemble's training, in bytes.

    Parameters four times (the model, the ensemble's copy, its gradient and room for
    the step) plus the optimizer's state (Adam: two moments, SGD with momentum: one),
    frozen parameters and buffers twice, the activations of one batch three times (the
    forward's saved tensors, their gradients and vmap's intermediates) and the batch.
    The activations are measured on two records and scaled to the batch size.
    """
    model = init_model(factory, 0)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    frozen += sum(b.numel() * b.element_size() for b in model.buffers())
    states = (1 if recipe.momentum else 0) if recipe.optimizer is Optimizer.SGD else 2
    rows = min(2, recipe.batch_size, len(inputs))
    activations = 0

    def count(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal activations
        outputs = output if isinstance(output, tuple | list) else (output,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor):
                activations += tensor.numel() * tensor.element_size()

    leaves = [m for m in model.modules() if not list(m.children())] or [model]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.train()
            model(inputs[:rows].to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    scale = recipe.batch_size / rows
    batch = inputs[:1].numel() * inputs.element_size() * recipe.batch_size
    return int(trainable * (4 + states) + 2 * frozen + 3 * activations * scale + batch)


def auto_models_per_task(*, budget: int, fixed: int, per_model: int, cap: int) -> int:
    """How many models one task trains at once: what the budget holds after the fixed
    cost, at least 1 and at most ``cap``.

    >>> auto_models_per_task(budget=8 * 2**30, fixed=2**30, per_model=2**20, cap=16)
    16
    >>> auto_models_per_task(budget=2**30, fixed=2**29, per_model=2**27, cap=16)
    4
    >>> auto_models_per_task(budget=2**20, fixed=2**30, per_model=2**27, cap=16)
    1
    """
    room = max(budget - fixed, 0)
    return max(1, min(cap, room // max(per_model, 1)))


def _task_budget(ray: Any, options: RayOptions, probe: Mapping[str, Any]) -> tuple[int, str]:
    """Bytes one task may use, and where the figure comes from."""
    if options.num_gpus > 0 and probe.get("gpu_free") is not None:
        share = min(options.num_gpus, 1.0)
        return int(probe["gpu_free"] * share), f"{share:g} of the worker GPU's free memory"
    if options.memory is not None:
        return options.memory, "the task's memory request"
    shares = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if not node.get("Alive") or resources.get("CPU", 0) < options.num_cpus:
            continue
        tasks = max(1.0, resources.get("CPU", 1.0) / max(options.num_cpus, 1e-9))
        shares.append(int(resources.get("memory", 0) / tasks))
    if not shares:
        return WORKER_BASE_BYTES, "no node reports its memory"
    return min(shares), "the smallest node's memory per task slot"


def _check_feasible(ray: Any, options: RayOptions) -> None:
    """Refuse a resource request no node of the cluster can meet (it would wait forever)."""
    wanted = {"CPU": options.num_cpus, "GPU": options.num_gpus, "memory": options.memory or 0}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0.0) >= v for k, v in wanted.items() if v) for node in nodes):
        return
    offered = [{k: node.get(k, 0) for k in ("CPU", "GPU", "memory")} for node in nodes]
    raise ConfigError(
        f"No node of the Ray cluster can run a task that asks for num_cpus="
        f"{options.num_cpus:g}, num_gpus={options.num_gpus:g}, memory={options.memory}: the "
        f"nodes offer {offered}. HINT: lower the request in the 'ray' section, or add (or "
        "let the autoscaler start) a node of that shape before the audit."
    )
