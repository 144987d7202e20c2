"""The general path: any model, its K copies' parameters stacked in one ``(K, P)`` tensor,
a vmapped ``functional_call`` forward and one autograd backward."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from privacy_gate.training.batched.batch_norm import (
    masked_moments,
    normalise,
    refuse_single_values,
    update_running_statistics,
)
from privacy_gate.training.batched.dp_step import DPGradients
from privacy_gate.training.batched.eligibility import BATCH_NORM_LAYERS, BatchingUnsupported
from privacy_gate.training.batched.losses import _loss_terms, _raise_if_nonfinite
from privacy_gate.training.batched.optimizer import _clip_per_model, _StackedOptimizer
from privacy_gate.training.batched.poisson import PoissonStreams
from privacy_gate.training.batched.schedule import _EpochPlan, _Order
from privacy_gate.training.batched.shared_weights import split_state
from privacy_gate.training.recipe import Loss, Recipe
from privacy_gate.training.steps import TrainingError, autocast


@dataclass(frozen=True)
class _Layout:
    """Where each trainable parameter lives in a row of the flat ``(K, P)`` tensor."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter ``(K, *shape)`` views of ``flat`` (differentiable)."""
        lead = flat.shape[:-1]
        return {
            name: part.view(*lead, *shape)
            for name, part, shape in zip(
                self.names, torch.split(flat, list(self.sizes), dim=-1), self.shapes, strict=True
            )
        }


class _UniformDropout(nn.Module):
    """``nn.Dropout`` with its mask drawn from ``torch.rand`` instead of ``bernoulli_``.

    Same distribution (keep with probability ``1 - p``, scale by ``1 / (1 - p)``), but on
    CPUs without torch's MKL Bernoulli path (e.g. AMD) ``bernoulli_`` is more than twice
    as slow and dominated the ensemble's step time.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        noise = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * noise


class _RowContext:
    """What the masked BatchNorm layers of one vmapped forward read (this model's row
    weights and real-row count) and write (their batch moments)."""

    def __init__(self) -> None:
        self.weight = torch.empty(0)
        self.count = torch.empty(0)
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.spatial: dict[str, int] = {}


class _MaskedBatchNorm(nn.Module):
    """A BatchNorm layer inside the vmapped template: the same parameters and buffers
    (``functional_call`` fills them per model), batch moments over the real rows only
    (`batch_norm`); the running statistics move outside the forward."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, name: str, context: _RowContext):
        super().__init__()
        for attribute in ("weight", "bias"):
            setattr(self, attribute, getattr(layer, attribute))
        for attribute in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(attribute, getattr(layer, attribute))
        self.eps, self.tracks = layer.eps, layer.track_running_stats
        self.layer_name, self.context = name, context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.context
        channels = x.shape[1]
        weight = context.weight.unsqueeze(1).expand(len(x), channels)
        mean, variance = masked_moments(x, weight, context.count.expand(channels))
        if self.tracks:
            context.moments[self.layer_name] = (mean, variance)
            context.spatial[self.layer_name] = math.prod(x.shape[2:])
        scale, shift = getattr(self, "weight"), getattr(self, "bias")  # noqa: B009 (typed Any)
        return normalise(x, mean, variance, self.eps, scale, shift)


def _functional_template(model: nn.Module, context: _RowContext) -> nn.Module:
    """A training-mode copy of ``model`` to run with stacked weights: BatchNorm layers
    become `_MaskedBatchNorm`; on CPU plain ``nn.Dropout`` layers draw masks with the
    faster `_UniformDropout`. ``functional_call`` supplies every parameter and buffer, so
    the copy shares ``model``'s tensors instead of copying them: a large frozen base is not
    held twice."""
    on_cpu = all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    shared: dict[int, object] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    template = copy.deepcopy(model, shared).train()
    for prefix, module in list(template.named_modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout and on_cpu:
                setattr(module, name, _UniformDropout(child.p))
            elif type(child) in BATCH_NORM_LAYERS:
                assert isinstance(child, nn.modules.batchnorm._BatchNorm)
                full = f"{prefix}.{name}" if prefix else name
                setattr(module, name, _MaskedBatchNorm(child, full, context))
    return template


class _Ensemble:
    """The stacked state of K models and one training step over all of them."""

    def __init__(
        self,
        models: list[nn.Module],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        recipe: Recipe,
        order: _Order,
        streams: PoissonStreams | None = None,
    ) -> None:
        self.models = models
        self.order = order
        self.recipe = recipe
        self.inputs = inputs
        self.labels = labels.long() if recipe.loss is Loss.CROSS_ENTROPY else labels
        state = split_state(models)
        params = state.trainable
        names = tuple(params)
        self.layout = _Layout(
            names=names,
            shapes=tuple(params[n].shape[1:] for n in names),
            sizes=tuple(math.prod(params[n].shape[1:]) for n in names),
        )
        self.flat = torch.cat([params[n].flatten(1) for n in names], dim=1)
        self.flat.requires_grad_(True)
        self.device = self.flat.device
        # Buffers and frozen parameters ride along unchanged: stacked where the models
        # differ, once (unbatched under vmap) where they share them (`shared_weights`).
        self.constants: dict[str, torch.Tensor] = state.constants
        self.shared: dict[str, torch.Tensor] = state.shared
        self.optimizer = _StackedOptimizer([self.flat.detach()], order.groups, recipe)
        self.context = _RowContext()
        self.base = _functional_template(models[0], self.context)
        self.batch_norms = {
            name: module
            for name, module in models[0].named_modules()
            if type(module) in BATCH_NORM_LAYERS
            and isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.track_running_stats
        }
        self.forward = vmap(self._model_loss, randomness="different")
        self.dp_gradients: DPGradients | None = None
        if recipe.dp is not None and streams is not None:  # DP-SGD: per-record gradients
            self.dp_gradients = DPGradients(
                self.base, recipe, recipe.dp, streams, self.layout.shapes, order.ids,
                shared=self.shared,
            )  # fmt: skip
        self.first_step = True
        self.step_moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _model_loss(
        self,
        params: dict[str, torch.Tensor],
        constants: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        count: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """One model's mean loss over its real rows, and its BatchNorm layers' batch
        moments (vmapped over models)."""
        self.context.weight, self.context.count = weight, count
        self.context.moments = {}
        logits = functional_call(self.base, {**params, **constants, **self.shared}, (x,))
        terms = _loss_terms(logits, y, self.recipe.loss)
        per_record = terms.reshape(terms.shape[0], -1).sum(dim=1)
        elements = terms[0].numel()
        return (per_record * weight).sum() / (count * elements), self.context.moments

    def step(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """One optimizer step of every model that has a batch at step ``t``."""
        if self.first_step:
            self._first_gradients(plan, t, epoch)
        else:
            self._gradients(plan, t, epoch)
        grad = self.flat.grad
        assert grad is not None
        if self.recipe.max_grad_norm is not None:
            _clip_per_model([grad], self.recipe.max_grad_norm)
        grads = self.optimizer.group_views([grad])
        self.optimizer.step(grads, plan.active[t], plan.all_active[t])
        self._move_running_statistics(plan.count[t], plan.active[t])

    def _move_running_statistics(self, count: torch.Tensor, active: torch.Tensor) -> None:
        for name, layer in self.batch_norms.items():
            mean, variance = self.step_moments[name]
            values = count * self.context.spatial[name]
            refuse_single_values(values, active, name)
            buffers = {b: self.constants[f"{name}.{b}"] for b in
                       ("running_mean", "running_var", "num_batches_tracked")}  # fmt: skip
            update_running_statistics(buffers, layer, mean, variance, values, active)

    def _gradients(self, plan: _EpochPlan, t: int, epoch: int, *, first: bool = False) -> None:
        """Forward and backward of all models at step ``t``; gradients in ``flat.grad``."""
        index = plan.index[t]
        rows = self.inputs.index_select(0, index.flatten().to(self.inputs.device))
        x = rows.view(*index.shape, *self.inputs.shape[1:]).to(self.device)
        y = self.labels[index.to(self.labels.device)].to(self.device)
        self.flat.grad = None
        if self.dp_gradients is not None:
            values = self.layout.views(self.flat.detach())
            self.flat.grad = self.dp_gradients(values, self.constants, x, y, plan, t, epoch)
            return
        params = self.layout.views(self.flat)
        with autocast(self.recipe, self.device):  # not every op: see `engine._ensemble`
            losses, moments = self.forward(
                params, self.constants, x, y, plan.weight[t], plan.count[t]
            )
        self.step_moments = moments
        if not bool(torch.isfinite(losses).all()):
            _raise_if_nonfinite(losses, plan.active[t], epoch, self.order.ids)
        if first:
            self._refuse_unused(losses, params)
        # Per-model losses depend only on their own rows of flat: one backward serves all.
        losses.sum().backward()  # type: ignore[no-untyped-call]

    def _first_gradients(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """The first step, where an architecture that vmap cannot batch shows up."""
        unchanged = {**self.constants, **self.shared}
        versions = {name: tensor._version for name, tensor in unchanged.items()}
        try:
            self._gradients(plan, t, epoch, first=True)
        except (TrainingError, BatchingUnsupported):
            raise
        except Exception as error:
            raise BatchingUnsupported(
                f"the model fails under torch.func.vmap: {type(error).__name__}: {error}"
            ) from error
        changed = sorted(n for n, tensor in unchanged.items() if tensor._version != versions[n])
        if changed:
            raise BatchingUnsupported(
                f"the forward pass updates buffer(s) {', '.join(changed)} in place; padded "
                "ensemble batches would change them."
            )
        self.first_step = False

    @staticmethod
    def _refuse_unused(losses: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """torch's optimizers skip a parameter without a gradient (no weight decay, no
        momentum, no Adam step); here it would get a zero gradient and be updated."""
        grads = torch.autograd.grad(
            losses.sum(), list(params.values()), retain_graph=True, allow_unused=True
        )
        unused = [name for name, g in zip(params, grads, strict=True) if g is None]
        if unused:
            raise BatchingUnsupported(
                f"parameter(s) {', '.join(unused)} get no gradient in the forward pass."
            )

    @torch.no_grad()
    def export(self, k: int) -> None:
        """Copy model ``k``'s trained weights into its ordinary module."""
        row = self.layout.views(self.flat.detach()[k])
        params = dict(self.models[k].named_parameters())
        for name, value in row.items():
            params[name].copy_(value)
        for name, buffer in self.models[k].named_buffers():
            if name in self.constants:
                buffer.copy_(self.constants[name][k])
