"""The MLP fast path: when a model qualifies, and the ensemble that trains K plain MLPs
with stacked weights, ``baddbmm`` forwards and the hand-written backward of
`mlp_layers`, without autograd or vmap."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privacy_gate.training.batched.chain import layer_chain
from privacy_gate.training.batched.dp_clip import clip_factors
from privacy_gate.training.batched.eligibility import _global_hooks, _has_hooks
from privacy_gate.training.batched.losses import _raise_if_nonfinite
from privacy_gate.training.batched.mlp_layers import _ACTIVATIONS, _compile_ops
from privacy_gate.training.batched.optimizer import _clip_per_model, _StackedOptimizer
from privacy_gate.training.batched.poisson import PoissonStreams
from privacy_gate.training.batched.schedule import _EpochPlan, _Order
from privacy_gate.training.recipe import Loss, Recipe

_DROPOUT_TAG = 0x64726F706F7574  # "dropout": keeps the mask stream apart from data orders


def mlp_fast_path_problem(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss: Loss
) -> str | None:
    """Why `train_batched` trains ``model`` with the general ``vmap`` path rather than
    the MLP fast path, or None when the fast path applies.

    The fast path takes a network whose forward is a chain (`chain.layer_chain`: a plain
    ``nn.Sequential``, nesting allowed, or any module whose traced forward applies its
    layers one after another, such as a LightningModule with ``self.net``) of
    ``Linear``, ``ReLU``, ``LeakyReLU``, ``GELU``, ``Tanh``, ``Sigmoid``, ``SiLU``,
    ``Dropout``, ``Identity`` and ``Flatten`` layers or the same activations as
    functions (exactly these classes, no hooks), all parameters trainable, on CPU, whose
    output is one vector of logits per record.
    """
    if _global_hooks():
        return "global module hooks are registered"
    for name, module in model.named_modules():  # every layer of the chain is one of these
        if _has_hooks(module):
            return f"{name or type(model).__name__} ({type(module).__name__}) has hooks"
    leaves = layer_chain(model)
    if isinstance(leaves, str):
        return f"the model is a {type(model).__name__}: {leaves}"
    params = list(model.parameters())
    if not params or not all(p.requires_grad for p in params):
        return "it has frozen parameters"
    dtype = params[0].dtype
    if any(p.device.type != "cpu" for p in params) or inputs.device.type != "cpu":
        return "the fast path runs on CPU only"
    if inputs.dtype != dtype or not dtype.is_floating_point:
        return f"the inputs ({inputs.dtype}) and parameters ({dtype}) differ in dtype"
    if len(inputs) == 0:
        return "there are no inputs"
    shape = tuple(inputs.shape[1:])
    linears = 0
    for index, layer in enumerate(leaves):
        label = f"layer {index} ({type(layer).__name__})"
        if isinstance(layer, nn.Linear) and type(layer) is nn.Linear:
            if len(shape) != 1 or shape[0] != layer.in_features:
                return f"{label} gets records of shape {shape}"
            shape = (layer.out_features,)
            linears += 1
        elif type(layer) is nn.Flatten:
            if layer.start_dim != 1 or layer.end_dim != -1:
                return f"{label} flattens dims {layer.start_dim}..{layer.end_dim}"
            shape = (math.prod(shape),)
        elif type(layer) is nn.Dropout:
            if layer.p >= 1.0:
                return f"{label} drops everything (p = 1)"
        elif type(layer) is nn.GELU:
            if layer.approximate not in ("none", "tanh"):
                return f"{label} uses approximation {layer.approximate!r}"
        elif type(layer) not in (*_ACTIVATIONS, nn.Identity):
            return f"{label} is not one of the fast path's layers"
    if not linears or len(shape) != 1:
        return f"the output per record has shape {shape}, not one vector of logits"
    outputs = shape[0]
    if loss is Loss.CROSS_ENTROPY:
        if labels.dim() != 1:
            return f"cross-entropy labels of shape {tuple(labels.shape)} are not one per record"
        if labels.is_floating_point() and not bool((labels == labels.round()).all()):
            return "cross-entropy labels are not whole numbers"
        if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < outputs):
            return f"cross-entropy labels fall outside 0..{outputs - 1}"
    elif math.prod(labels.shape[1:]) != outputs:
        return f"labels of shape {tuple(labels.shape[1:])} per record do not match {outputs} logits"
    return None


class _MLPEnsemble:
    """K plain MLPs trained with stacked weights and a hand-written backward: no
    autograd graph, no vmap, preallocated activations; see `mlp_fast_path_problem`."""

    def __init__(
        self,
        models: list[nn.Module],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        recipe: Recipe,
        seeds: Sequence[int],
        order: _Order,
        streams: PoissonStreams | None = None,
    ) -> None:
        self.models = models
        self.order = order
        self.streams = streams
        self.recipe = recipe
        self.device = torch.device("cpu")
        self.inputs = inputs.detach().reshape(len(inputs), -1).contiguous()
        if recipe.loss is Loss.CROSS_ENTROPY:
            self.labels = labels.detach().long()
        else:
            self.labels = labels.detach().reshape(len(labels), -1).to(inputs.dtype).contiguous()
        layer_lists = [layer_chain(m) for m in models]
        lists = [layers for layers in layer_lists if not isinstance(layers, str)]
        shapes = {tuple((type(layer), *(tuple(p.shape) for p in layer.parameters()))
                        for layer in layers) for layers in lists}  # fmt: skip
        if len(lists) != len(models) or len(shapes) != 1:
            raise ValueError("the factory's models differ in their layers")
        entropy = [_DROPOUT_TAG, *(seed & 0xFFFFFFFFFFFFFFFF for seed in seeds)]
        self.generator = np.random.PCG64(np.random.SeedSequence(entropy))
        self.ops, self.linears = _compile_ops(lists, self.generator)
        params = [p for op, _ in self.linears for p in op.parameters()]
        grads = [g for op, _ in self.linears for g in op.gradients()]
        self.grads = grads
        self.optimizer = _StackedOptimizer(params, order.groups, recipe)
        self.group_grads = self.optimizer.group_views(grads)
        self.x: torch.Tensor | None = None
        self.plan: _EpochPlan | None = None
        self.plan_labels = self.labels[:0]
        if recipe.dp is not None:  # ghost clipping: norms in backward, gradients after
            for op, _ in self.linears:
                op.ghost = True

    @torch.no_grad()
    def step(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """One optimizer step of every model that has a batch at step ``t``."""
        self.gradients(plan, t, epoch)
        if self.recipe.dp is not None:
            self._private_gradients(plan.weight[t], plan.active[t])
        elif self.recipe.max_grad_norm is not None:
            _clip_per_model(self.grads, self.recipe.max_grad_norm)
        self.optimizer.step(self.group_grads, plan.active[t], plan.all_active[t])

    def _private_gradients(self, weight: torch.Tensor, active: torch.Tensor) -> None:
        """DP-SGD as Opacus' ``DPOptimizer``: each record's gradient clipped to
        ``max_grad_norm`` (norms by ghost clipping), summed, Gaussian noise per model,
        divided by the model's expected batch size."""
        dp, streams = self.recipe.dp, self.streams
        assert dp is not None and streams is not None
        squared = sum(op.record_sq_norms for op, _ in self.linears)
        assert isinstance(squared, torch.Tensor)
        norms = squared.sqrt_()
        factor = clip_factors(norms, dp.max_grad_norm, weight)
        for op, _ in self.linears:
            op.accumulate_clipped(factor.unsqueeze(2))
        std = dp.noise_multiplier * dp.max_grad_norm
        if std:
            shapes = [shape for op, _ in self.linears for shape in op.model_shapes()]
            for k in active.nonzero().flatten().tolist():  # idle models draw no noise
                noise = streams.noise_parts(k, shapes, std, self.grads[0].dtype)
                for op, _ in self.linears:
                    count = len(op.parameters())
                    op.add_noise(k, noise[:count])
                    noise = noise[count:]
        for grad in self.grads:
            streams.normalise(grad)

    @torch.no_grad()
    def gradients(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """Forward and backward of all models at step ``t``, into the ops' gradients."""
        index = plan.index[t]
        k, w = index.shape
        if self.x is None or self.x.shape[:2] != (k, w):
            self.x = torch.empty(k, w, self.inputs.shape[1], dtype=self.inputs.dtype)
        flat_index = index.reshape(-1)
        torch.index_select(self.inputs, 0, flat_index, out=self.x.view(k * w, -1))
        if self.plan is not plan:  # the epoch's labels, gathered once
            self.plan, self.plan_labels = plan, self.labels[plan.index]
        h = self.x
        for op in self.ops:
            h = op.forward(h)
        losses, grad = self._loss(h, self.plan_labels[t], plan.weight[t], plan.count[t])
        if not bool(torch.isfinite(losses).all()):
            _raise_if_nonfinite(losses, plan.active[t], epoch, self.order.ids)
        for op in reversed(self.ops):
            next_grad = op.backward(grad)
            if next_grad is None:
                break
            grad = next_grad

    def _loss(
        self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
        count: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Per-model mean losses ``(K,)`` and their gradient with respect to the logits
        (DP-SGD: summed losses, each record's gradient that of its own loss)."""
        k, w, classes = logits.shape
        weight, count = weight.to(logits.dtype), count.to(logits.dtype)  # float64 models
        if self.recipe.dp is not None:
            count = torch.ones_like(count)
        if self.recipe.loss is Loss.CROSS_ENTROPY:
            coefficient = (weight / count.unsqueeze(1)).unsqueeze(2)  # (K, W, 1)
            y = labels.view(k, w, 1)
            log_p = torch.log_softmax(logits, dim=2)
            losses = -(log_p.gather(2, y) * coefficient).sum(dim=(1, 2))
            grad = log_p.exp_().mul_(coefficient)
            grad.scatter_add_(2, y, -coefficient)
            return losses, grad
        coefficient = (weight / (count * classes).unsqueeze(1)).unsqueeze(2)
        targets = labels.view(k, w, classes)
        terms = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        losses = (terms * coefficient).sum(dim=(1, 2))
        grad = torch.sigmoid(logits).sub_(targets).mul_(coefficient)
        return losses, grad

    @torch.no_grad()
    def export(self, k: int) -> None:
        """Copy model ``k``'s trained weights into its ordinary module."""
        for op, modules in self.linears:
            op.export(modules[k], k)
