"""Train K small models at once as one batched computation (``torch.func``).

An audit needs many reference models trained with the candidate's own recipe. One step
of one small model is too little work to keep the machine busy and pays the Python and
dispatch overhead of a whole training step; here the K models' parameters are stacked,
and one vmapped forward/backward plus one vectorised optimizer update step all of them.

The result must not depend on the backend: model ``k`` is initialised, fed and updated
exactly as `sequential.train_one` does it with ``seeds[k]`` (same initialisation, same
batches in the same order, same mean loss, clipping and optimizer arithmetic), so the
trained weights agree to float rounding for deterministic layers. Dropout draws its own
masks per model (the random streams of the two backends differ, as they do between runs;
on CPU, plain ``nn.Dropout`` layers draw them with `_UniformDropout`, which is faster).

Layout: the trainable parameters of all models live in one ``(K, P)`` tensor (row ``k``
is model ``k``); each parameter is a view of it. Gradients and optimizer states share
that layout, so an optimizer step is a handful of large element-wise ops whatever the
number of parameter tensors.

Ragged subsets: models see different numbers of records, hence different step counts and
last-batch sizes. At step ``t`` every model gets the same number of rows; rows past its
real batch repeat its batch's first record and carry weight 0, and a model whose epoch is
over takes no optimizer step (parameters, momentum, Adam moments and step count stay).
This is why layers that mix the rows of a batch (BatchNorm) cannot be batched here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from privacy_gate.training.data_order import epoch_batches
from privacy_gate.training.recipe import Loss, Optimizer, Recipe
from privacy_gate.training.sequential import ModelFactory, TrainingError, init_model

__all__ = ["BatchingUnsupported", "batching_problem", "train_batched"]

# Layers whose output for one record depends on the other rows of the batch or whose
# forward writes to buffers: padding ragged batches would change what they compute.
_BATCH_STATISTIC_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)


class BatchingUnsupported(Exception):
    """The model cannot be trained as a batched ensemble; the caller trains it
    sequentially instead and logs ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def batching_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be batched, or None when it can.

    Checked up front so the caller can fall back without training anything; a forward
    that fails under ``vmap`` is still caught at the first step of `train_batched`.
    """
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, _BATCH_STATISTIC_LAYERS):
            return (
                f"{label} ({type(module).__name__}) is a BatchNorm layer: it normalises with "
                "statistics of the whole batch and updates its running statistics in the "
                "forward pass, which padded ensemble batches would change."
            )
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and (
            module.track_running_stats
        ):
            return (
                f"{label} ({type(module).__name__}) tracks running statistics: it updates "
                "buffers in the forward pass."
            )
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            return f"{label} ({type(module).__name__}) is a lazy module (uninitialised shapes)."
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        return "the model has no trainable parameters."
    kinds = sorted({f"{p.dtype} on {p.device}" for p in trainable})
    if len(kinds) > 1:
        return f"its trainable parameters mix dtypes or devices ({', '.join(kinds)})."
    return None


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


@dataclass
class _EpochPlan:
    """One epoch of all models as dense tables, built once so that a step only slices.

    ``W`` (the padded batch width) is the batch size, or the largest subset when every
    subset is smaller than one batch.
    """

    index: torch.Tensor  # (S, K, W) int64 record indices (padding repeats a real record)
    weight: torch.Tensor  # (S, K, W) 1.0 for real rows, 0.0 for padding
    count: torch.Tensor  # (S, K) real rows per model, at least 1 (no 0/0 for idle models)
    active: torch.Tensor  # (S, K) bool: the model has a batch, so takes a step
    all_active: list[bool]  # per step: no model idle (nothing to mask)
    last_step: NDArray[np.intp]  # (K,) the step at which each model ends the epoch


def _plan_epoch(
    subsets: Sequence[NDArray[np.intp]],
    seeds: Sequence[int],
    epoch: int,
    batch_size: int,
    device: torch.device,
) -> _EpochPlan:
    """Padded batch tables of one epoch, from the very batches `train_one` draws."""
    orders = [
        np.concatenate(epoch_batches(s, epoch=epoch, seed=seed, batch_size=batch_size))
        for s, seed in zip(subsets, seeds, strict=True)
    ]
    lengths = np.array([len(o) for o in orders], dtype=np.intp)
    steps = -(-lengths // batch_size)
    n_steps, width = int(steps.max()), min(batch_size, int(lengths.max()))
    step = np.arange(n_steps)[:, None]
    position = step * batch_size + np.arange(width)[None, :]  # (S, W) place in the order
    index = np.empty((n_steps, len(orders), width), dtype=np.int64)
    for k, order in enumerate(orders):
        # Padding repeats the first record of the model's own (last) batch: a record it
        # really trains on, so padded rows stay finite whenever its real rows are.
        first = np.minimum(step, steps[k] - 1) * batch_size
        index[:, k] = order[np.where(position < lengths[k], position, first)]
    real = position[:, None, :] < lengths[None, :, None]  # (S, K, W)
    counts = real.sum(axis=2)
    return _EpochPlan(
        index=torch.from_numpy(index).to(device),
        weight=torch.from_numpy(real.astype(np.float32)).to(device),
        count=torch.from_numpy(np.maximum(counts, 1).astype(np.float32)).to(device),
        active=torch.from_numpy(counts > 0).to(device),
        all_active=(counts > 0).all(axis=1).tolist(),
        last_step=steps - 1,
    )


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


def _functional_template(model: nn.Module) -> nn.Module:
    """A training-mode copy of ``model`` to run with stacked weights; on CPU its plain
    ``nn.Dropout`` layers draw masks with the faster `_UniformDropout`."""
    template = copy.deepcopy(model).train()
    on_cpu = all(t.device.type == "cpu" for t in (*template.parameters(), *template.buffers()))
    if on_cpu:
        for module in list(template.modules()):
            for name, child in module.named_children():
                if type(child) is nn.Dropout:
                    setattr(module, name, _UniformDropout(child.p))
    return template


class _FunctionalOptimizer:
    """The recipe's optimizer over the flat ``(K, P)`` parameters with per-model step
    counts; the arithmetic mirrors torch's single-tensor (``foreach=False``) code."""

    def __init__(self, flat: torch.Tensor, recipe: Recipe) -> None:
        self.recipe = recipe
        k = flat.shape[0]
        self.steps = torch.zeros(k, dtype=torch.float64, device=flat.device)
        self.buffers: list[torch.Tensor] = []
        if recipe.optimizer is Optimizer.SGD:
            if recipe.momentum != 0:
                # torch starts the buffer as a copy of the first gradient; 0 * m + g == g.
                self.buffers = [torch.zeros_like(flat)]
        else:
            self.buffers = [torch.zeros_like(flat), torch.zeros_like(flat)]

    def state(self) -> list[torch.Tensor]:
        return self.buffers

    @torch.no_grad()
    def step(self, param: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> None:
        """Update every row of ``param``; the caller restores rows of idle models."""
        r = self.recipe
        self.steps += active.to(torch.float64)
        if r.optimizer is Optimizer.SGD:
            if r.weight_decay != 0:
                grad = grad.add(param, alpha=r.weight_decay)
            if r.momentum != 0:
                (buf,) = self.buffers
                buf.mul_(r.momentum).add_(grad)
                grad = buf
            param.add_(grad, alpha=-r.learning_rate)
            return
        exp_avg, exp_avg_sq = self.buffers
        beta1, beta2 = r.betas
        if r.weight_decay != 0:
            if r.optimizer is Optimizer.ADAMW:
                param.mul_(1 - r.learning_rate * r.weight_decay)
            else:
                grad = grad.add(param, alpha=r.weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # Per-model bias corrections in float64, as torch computes them in Python floats.
        steps = self.steps.clamp(min=1.0)
        bias_correction1 = 1 - beta1**steps
        bias_correction2 = 1 - beta2**steps
        neg_step_size = (-r.learning_rate / bias_correction1).to(param.dtype).unsqueeze(1)
        bias_correction2_sqrt = (bias_correction2**0.5).to(param.dtype).unsqueeze(1)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(r.eps)
        param.addcdiv_(exp_avg * neg_step_size, denom)


def _loss_terms(logits: torch.Tensor, labels: torch.Tensor, loss: Loss) -> torch.Tensor:
    """Element-wise loss (no reduction) of one model's batch, as `compute_loss` before
    its mean."""
    if loss is Loss.CROSS_ENTROPY:
        # F.cross_entropy's own arithmetic (log-softmax, then pick the true class), spelt
        # out because its vmap rule goes through a slower Python decomposition.
        log_p = torch.log_softmax(logits, dim=1)
        return -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
    targets = labels.to(logits.dtype).reshape(logits.shape)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def _check_inputs(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subsets: Sequence[NDArray[np.intp]],
    seeds: Sequence[int],
) -> None:
    if len(subsets) != len(seeds):
        raise ValueError(f"Got {len(subsets)} subsets but {len(seeds)} seeds.")
    if len(inputs) != len(labels):
        raise ValueError(f"Got {len(inputs)} inputs but {len(labels)} labels.")
    for k, subset in enumerate(subsets):
        if len(subset) == 0:
            raise TrainingError(
                f"model {k} has an empty training subset. HINT: the audit pool "
                "needs at least 2 patients."
            )


def train_batched(
    factory: ModelFactory,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subsets: Sequence[NDArray[np.intp]],
    recipe: Recipe,
    *,
    seeds: Sequence[int],
    on_model_done: Callable[[int], None] | None = None,
) -> list[nn.Module]:
    """Train ``len(subsets)`` models as one vmapped ensemble.

    Model ``k`` equals ``train_one(factory, inputs, labels, subsets[k], recipe,
    seed=seeds[k])`` up to float rounding (dropout masks aside). Dropout masks come from
    torch's global generator, which the seeded initialisations leave in a fixed state, so
    a run is reproducible.

    Args:
        factory: builds an untrained model (all K share its architecture).
        inputs: ``(n_records, ...)`` features of the whole pool.
        labels: ``(n_records, ...)`` labels of the whole pool.
        subsets: per model, the indices of the records it trains on.
        recipe: the candidate's training recipe.
        seeds: per model, its initialisation and data-order seed.
        on_model_done: called with ``k`` as soon as model ``k`` has finished its last
            epoch (models with smaller subsets finish earlier).

    Returns:
        K ordinary modules in eval mode holding the trained weights.

    Raises:
        BatchingUnsupported: the architecture cannot be batched (see `batching_problem`),
            or its forward fails under ``vmap``; train sequentially instead.
        TrainingError: a model's loss became NaN or infinite, or a subset is empty.
    """
    _check_inputs(inputs, labels, subsets, seeds)
    if not subsets:
        return []
    first = init_model(factory, seeds[0])
    problem = batching_problem(first)
    if problem is not None:
        raise BatchingUnsupported(problem)
    models = [first, *(init_model(factory, seed) for seed in seeds[1:])]
    try:
        trainer = _Ensemble(models, inputs, labels, recipe)
    except Exception as error:  # e.g. a factory whose models differ in shape
        raise BatchingUnsupported(
            f"the models cannot be stacked: {type(error).__name__}: {error}"
        ) from error
    for epoch in range(recipe.epochs):
        plan = _plan_epoch(subsets, seeds, epoch, recipe.batch_size, trainer.device)
        done_at: dict[int, list[int]] = {}
        if epoch == recipe.epochs - 1:
            for k, step in enumerate(plan.last_step.tolist()):
                done_at.setdefault(step, []).append(k)
        for t in range(len(plan.all_active)):
            trainer.step(plan, t, epoch)
            for k in done_at.get(t, ()):
                trainer.export(k)
                if on_model_done is not None:
                    on_model_done(k)
    for model in models:
        model.eval()
    return models


class _Ensemble:
    """The stacked state of K models and one training step over all of them."""

    def __init__(
        self, models: list[nn.Module], inputs: torch.Tensor, labels: torch.Tensor, recipe: Recipe
    ) -> None:
        self.models = models
        self.recipe = recipe
        self.inputs = inputs
        self.labels = labels.long() if recipe.loss is Loss.CROSS_ENTROPY else labels
        params, buffers = stack_module_state(models)
        trainable = dict(models[0].named_parameters())
        names = tuple(n for n in params if trainable[n].requires_grad)
        self.layout = _Layout(
            names=names,
            shapes=tuple(params[n].shape[1:] for n in names),
            sizes=tuple(math.prod(params[n].shape[1:]) for n in names),
        )
        self.flat = torch.cat([params[n].detach().flatten(1) for n in names], dim=1)
        self.flat.requires_grad_(True)
        self.device = self.flat.device
        # Frozen parameters and buffers ride along unchanged.
        self.constants: dict[str, torch.Tensor] = {
            n: t.detach() for n, t in {**params, **buffers}.items() if n not in names
        }
        self.optimizer = _FunctionalOptimizer(self.flat, recipe)
        self.base = _functional_template(models[0])
        self.forward = vmap(self._model_loss, randomness="different")
        self.first_step = True

    def _model_loss(
        self,
        params: dict[str, torch.Tensor],
        constants: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        count: torch.Tensor,
    ) -> torch.Tensor:
        """One model's mean loss over its real rows (vmapped over models)."""
        logits = functional_call(self.base, {**params, **constants}, (x,))
        terms = _loss_terms(logits, y, self.recipe.loss)
        per_record = terms.reshape(terms.shape[0], -1).sum(dim=1)
        elements = terms[0].numel()
        return (per_record * weight).sum() / (count * elements)

    def step(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """One optimizer step of every model that has a batch at step ``t``."""
        if self.first_step:
            self._first_gradients(plan, t, epoch)
        else:
            self._gradients(plan, t, epoch)
        grad = self.flat.grad
        assert grad is not None
        if self.recipe.max_grad_norm is not None:
            # clip_grad_norm_ per model: the 2-norm over all its parameters.
            norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
            grad.mul_((self.recipe.max_grad_norm / (norm + 1e-6)).clamp_(max=1.0))
        param, active = self.flat.detach(), plan.active[t]
        if plan.all_active[t]:
            self.optimizer.step(param, grad, active)
            return
        # Models whose epoch is over take no step: put their rows back afterwards.
        tensors = (param, *self.optimizer.state())
        idle = ~active
        saved = [tensor[idle] for tensor in tensors]
        self.optimizer.step(param, grad, active)
        for tensor, old in zip(tensors, saved, strict=True):
            tensor[idle] = old

    def _gradients(self, plan: _EpochPlan, t: int, epoch: int, *, first: bool = False) -> None:
        """Forward and backward of all models at step ``t``; gradients in ``flat.grad``."""
        index = plan.index[t]
        rows = self.inputs.index_select(0, index.flatten().to(self.inputs.device))
        x = rows.view(*index.shape, *self.inputs.shape[1:]).to(self.device)
        y = self.labels[index.to(self.labels.device)].to(self.device)
        self.flat.grad = None
        params = self.layout.views(self.flat)
        losses = self.forward(params, self.constants, x, y, plan.weight[t], plan.count[t])
        if not bool(torch.isfinite(losses).all()):
            self._raise_if_nonfinite(losses, plan.active[t], epoch)
        if first:
            self._refuse_unused(losses, params)
        # Per-model losses depend only on their own rows of flat: one backward serves all.
        losses.sum().backward()  # type: ignore[no-untyped-call]

    def _first_gradients(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """The first step, where an architecture that vmap cannot batch shows up."""
        versions = {name: tensor._version for name, tensor in self.constants.items()}
        try:
            self._gradients(plan, t, epoch, first=True)
        except (TrainingError, BatchingUnsupported):
            raise
        except Exception as error:
            raise BatchingUnsupported(
                f"the model fails under torch.func.vmap: {type(error).__name__}: {error}"
            ) from error
        changed = sorted(
            n for n, tensor in self.constants.items() if tensor._version != versions[n]
        )
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

    def _raise_if_nonfinite(self, losses: torch.Tensor, active: torch.Tensor, epoch: int) -> None:
        """`train_one`'s error for the first model with a non-finite loss on a real batch
        (idle models' losses are ignored: they take no step)."""
        bad = (~torch.isfinite(losses) & active).nonzero().flatten().tolist()
        if bad:
            k = bad[0]
            value = float(losses[k].detach())
            raise TrainingError(
                f"model {k}: the loss became {value} in epoch {epoch}. HINT: lower the "
                "learning rate, clip gradients (max_grad_norm) or check the inputs."
            )

    @torch.no_grad()
    def export(self, k: int) -> None:
        """Copy model ``k``'s trained weights into its ordinary module."""
        row = self.layout.views(self.flat.detach()[k])
        params = dict(self.models[k].named_parameters())
        for name, value in row.items():
            params[name].copy_(value)
