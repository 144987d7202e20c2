"""Train K small models at once as one batched computation.

An audit needs many reference models trained with the candidate's own recipe. One step
of one small model is too little work to keep the machine busy and pays the Python and
dispatch overhead of a whole training step; here the K models' parameters are stacked,
and one batched forward/backward plus one fused optimizer call step all of them.

Two paths compute the step:

- the MLP fast path (`mlp_fast_path_problem` says when it applies: a plain
  ``nn.Sequential`` of Linear layers, activations, Dropout, Identity and Flatten, on
  CPU): stacked ``(K, out, in)`` weights, one ``baddbmm`` per layer forward and a backward
  written out by hand, without autograd or vmap (`_MLPEnsemble`);
- the general path for any other model (``torch.func``): the trainable parameters of all
  models live in one ``(K, P)`` tensor (row ``k`` is model ``k``), and a vmapped
  ``functional_call`` with one autograd backward gives all gradients (`_Ensemble`).

The result must not depend on the backend: model ``k`` is initialised, fed and updated
exactly as `sequential.train_one` does it with ``seeds[k]`` (same initialisation, same
batches in the same order, same mean loss, clipping and optimizer arithmetic), so the
trained weights agree to float rounding for deterministic layers. Dropout draws its own
masks per model (the random streams of the backends differ, as they do between runs;
the fast path draws them from a numpy stream seeded by the seeds, see `_DropoutOp`; on
CPU the general path draws them with `_UniformDropout`, which is faster than
``bernoulli_``).

Ragged subsets: models see different numbers of records, hence different step counts and
last-batch sizes. At step ``t`` every model gets the same number of rows; rows past its
real batch repeat its batch's first record and carry weight 0, and a model whose epoch is
over takes no optimizer step (parameters, momentum, Adam moments and step count stay).
Inside the ensemble the models are sorted by steps per epoch, so that models stepping
together are contiguous for the optimizer (`_StackedOptimizer`). This is why layers that
mix the rows of a batch (BatchNorm) cannot be batched here.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from privacy_gate.training.data_order import epoch_batches, steps_per_epoch
from privacy_gate.training.recipe import Loss, Optimizer, Recipe
from privacy_gate.training.steps import ModelFactory, TrainingError, init_model

__all__ = ["BatchingUnsupported", "batching_problem", "mlp_fast_path_problem", "train_batched"]

_LOG = logging.getLogger("privacy_gate.training")

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


class _StackedOptimizer:
    """The recipe's optimizer over K stacked models, with per-model step counts.

    The models come sorted by steps per epoch, so ``groups`` (``[start, stop)`` ranges of
    models with equal steps per epoch) are contiguous: the models of a group take their
    steps together, always have equal step counts (hence equal Adam bias corrections),
    and their rows of every stacked ``(K, ...)`` tensor form one contiguous block. One
    call of torch's fused Adam/AdamW/SGD kernel then updates every model with a few
    large tensors (one per parameter and group; a kernel call per model and parameter
    would pay a parallel region for each small tensor). A group without a batch at this
    step is left out of the call, so its parameters, moments and step count stay as they
    are, just as a model whose epoch is over takes no step in `train_one`. The fused
    kernels compute what the single-tensor (``foreach=False``) optimizers of
    `make_optimizer` compute, up to float rounding.
    """

    def __init__(
        self, params: list[torch.Tensor], groups: list[tuple[int, int]], recipe: Recipe
    ) -> None:
        device = params[0].device
        if device.type not in ("cpu", "cuda"):
            raise BatchingUnsupported(f"no fused optimizer kernels on {device.type}")
        self.recipe = recipe
        self.groups = groups
        self.params = [[p[a:b] for p in params] for a, b in groups]
        self.steps = torch.zeros(len(groups), dtype=torch.float32, device=device)
        self.step_views = [self.steps[g] for g in range(len(groups))]
        sgd = recipe.optimizer is Optimizer.SGD
        states = (1 if recipe.momentum != 0 else 0) if sgd else 2
        # SGD: torch starts momentum as a copy of the first gradient; 0 * m + g == g.
        stacked = [[torch.zeros_like(p) for p in params] for _ in range(states)]
        self.states = [[[s[a:b] for s in state] for a, b in groups] for state in stacked]
        self.first = [a for a, _ in groups]

    def group_views(self, grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """``grads`` (stacked like the parameters) split by group."""
        return [[g[a:b] for g in grads] for a, b in self.groups]

    def step(self, grads: list[list[torch.Tensor]], active: torch.Tensor, all_active: bool) -> None:
        """Update the models marked in ``active`` ``(K,)``; ``grads`` from `group_views`."""
        if all_active:
            chosen: Sequence[int] = range(len(self.groups))
            self.steps += 1
        else:
            chosen = active[self.first].nonzero().flatten().tolist()
            if not chosen:
                return
            self.steps[chosen] += 1
        params = [p for g in chosen for p in self.params[g]]
        grad_list = [p for g in chosen for p in grads[g]]
        states = [[s for g in chosen for s in state[g]] for state in self.states]
        r = self.recipe
        if r.optimizer is Optimizer.SGD:
            torch._fused_sgd_(
                params, grad_list, states[0] if states else [], weight_decay=r.weight_decay,
                momentum=r.momentum, lr=r.learning_rate, dampening=0.0, nesterov=False,
                maximize=False, is_first_step=False,
            )  # fmt: skip
            return
        steps = [self.step_views[g] for g in chosen for _ in self.params[g]]
        fused = torch._fused_adamw_ if r.optimizer is Optimizer.ADAMW else torch._fused_adam_
        fused(
            params, grad_list, states[0], states[1], [], steps, lr=r.learning_rate,
            beta1=r.betas[0], beta2=r.betas[1], weight_decay=r.weight_decay, eps=r.eps,
            amsgrad=False, maximize=False,
        )  # fmt: skip


def _step_groups(subsets: Sequence[NDArray[np.intp]], batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of models with equal steps per epoch (sorted subsets)."""
    steps = [steps_per_epoch(len(s), batch_size) for s in subsets]
    starts = [k for k in range(len(steps)) if k == 0 or steps[k] != steps[k - 1]]
    return list(zip(starts, [*starts[1:], len(steps)], strict=True))


def _clip_per_model(grads: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each model: ``grads`` are stacked ``(K, ...)`` gradients;
    row ``k`` of all of them together is model ``k``'s gradient."""
    norms = [torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)
    coefficient = (max_norm / (total + 1e-6)).clamp_(max=1.0)
    for g in grads:
        g.mul_(coefficient.view(-1, *([1] * (g.dim() - 1))))


def _raise_if_nonfinite(
    losses: torch.Tensor, active: torch.Tensor, epoch: int, ids: list[int]
) -> None:
    """`train_one`'s error for the first model (caller's index, ``ids``) with a
    non-finite loss on a real batch (idle models' losses are ignored: they take no
    step)."""
    bad = (~torch.isfinite(losses) & active).nonzero().flatten().tolist()
    if bad:
        j = min(bad, key=lambda b: ids[b])
        value = float(losses[j].detach())
        raise TrainingError(
            f"model {ids[j]}: the loss became {value} in epoch {epoch}. HINT: lower the "
            "learning rate, clip gradients (max_grad_norm) or check the inputs."
        )


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
    fast_path: bool = True,
) -> list[nn.Module]:
    """Train ``len(subsets)`` models as one batched ensemble.

    Model ``k`` equals ``train_one(factory, inputs, labels, subsets[k], recipe,
    seed=seeds[k])`` up to float rounding (dropout masks aside). Plain MLPs (see
    `mlp_fast_path_problem`) take the fast path, whose dropout masks come from a numpy
    stream seeded by ``seeds``; other models are vmapped, their masks come from torch's
    global generator, which the seeded initialisations leave in a fixed state. Either
    way a run is reproducible.

    Args:
        factory: builds an untrained model (all K share its architecture).
        inputs: ``(n_records, ...)`` features of the whole pool.
        labels: ``(n_records, ...)`` labels of the whole pool.
        subsets: per model, the indices of the records it trains on.
        recipe: the candidate's training recipe.
        seeds: per model, its initialisation and data-order seed.
        on_model_done: called with ``k`` as soon as model ``k`` has finished its last
            epoch (models with smaller subsets finish earlier).
        fast_path: False trains even a plain MLP with the general vmap path (for
            comparisons).

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
    reason = (
        mlp_fast_path_problem(first, inputs, labels, recipe.loss)
        if fast_path
        else "the caller asked for it"
    )
    # Inside the ensemble the models are sorted by steps per epoch (most first), so
    # models that step together are contiguous (see `_StackedOptimizer`); ``ids[j]`` is
    # the caller's index of the model at position j.
    per_epoch = [steps_per_epoch(len(s), recipe.batch_size) for s in subsets]
    ids = sorted(range(len(subsets)), key=lambda k: -per_epoch[k])
    order = _Order(ids, _step_groups([subsets[k] for k in ids], recipe.batch_size))
    sorted_models = [models[k] for k in ids]
    sorted_subsets, sorted_seeds = [subsets[k] for k in ids], [seeds[k] for k in ids]
    trainer: _Ensemble | _MLPEnsemble
    try:
        if reason is None:
            trainer = _MLPEnsemble(sorted_models, inputs, labels, recipe, sorted_seeds, order)
        else:
            _LOG.info("Batched training takes the general vmap path: %s.", reason)
            trainer = _Ensemble(sorted_models, inputs, labels, recipe, order)
    except BatchingUnsupported:
        raise
    except Exception as error:  # e.g. a factory whose models differ in shape
        raise BatchingUnsupported(
            f"the models cannot be stacked: {type(error).__name__}: {error}"
        ) from error
    for epoch in range(recipe.epochs):
        plan = _plan_epoch(sorted_subsets, sorted_seeds, epoch, recipe.batch_size, trainer.device)
        done_at: dict[int, list[int]] = {}
        if epoch == recipe.epochs - 1:
            for j, step in enumerate(plan.last_step.tolist()):
                done_at.setdefault(step, []).append(j)
        for t in range(len(plan.all_active)):
            trainer.step(plan, t, epoch)
            for j in done_at.get(t, ()):
                trainer.export(j)
                if on_model_done is not None:
                    on_model_done(ids[j])
    for model in models:
        model.eval()
    return models


@dataclass(frozen=True)
class _Order:
    """How the ensemble sorted the caller's models: position ``j`` holds the caller's
    model ``ids[j]``; ``groups`` are the `_StackedOptimizer`'s step groups."""

    ids: list[int]
    groups: list[tuple[int, int]]


class _Ensemble:
    """The stacked state of K models and one training step over all of them."""

    def __init__(
        self,
        models: list[nn.Module],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        recipe: Recipe,
        order: _Order,
    ) -> None:
        self.models = models
        self.order = order
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
        self.optimizer = _StackedOptimizer([self.flat.detach()], order.groups, recipe)
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
            _clip_per_model([grad], self.recipe.max_grad_norm)
        grads = self.optimizer.group_views([grad])
        self.optimizer.step(grads, plan.active[t], plan.all_active[t])

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
            _raise_if_nonfinite(losses, plan.active[t], epoch, self.order.ids)
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

    @torch.no_grad()
    def export(self, k: int) -> None:
        """Copy model ``k``'s trained weights into its ordinary module."""
        row = self.layout.views(self.flat.detach()[k])
        params = dict(self.models[k].named_parameters())
        for name, value in row.items():
            params[name].copy_(value)


# ---------------------------------------------------------------------------------------
# The MLP fast path: stacked Linear weights, forward with baddbmm, backward by hand.


_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU
)  # fmt: skip
_DROPOUT_TAG = 0x64726F706F7574  # "dropout": keeps the mask stream apart from data orders


def _sequential_leaves(model: nn.Module) -> list[nn.Module] | str:
    """The layers of a (nested) plain ``nn.Sequential``, or why ``model`` is not one."""
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not a plain nn.Sequential"
    leaves: list[nn.Module] = []
    for child in model:
        if type(child) is nn.Sequential:
            inner = _sequential_leaves(child)
            if isinstance(inner, str):
                return inner
            leaves += inner
        else:
            leaves.append(child)
    return leaves


def _has_hooks(module: nn.Module) -> bool:
    return any(
        getattr(module, name, None)
        for name in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"
        )
    )  # fmt: skip


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_globals

    return any(
        getattr(module_globals, name, None)
        for name in (
            "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )  # fmt: skip


def mlp_fast_path_problem(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, loss: Loss
) -> str | None:
    """Why `train_batched` trains ``model`` with the general ``vmap`` path rather than
    the MLP fast path, or None when the fast path applies.

    The fast path takes a plain ``nn.Sequential`` (nesting allowed) of ``Linear``,
    ``ReLU``, ``LeakyReLU``, ``GELU``, ``Tanh``, ``Sigmoid``, ``SiLU``, ``Dropout``,
    ``Identity`` and ``Flatten`` layers (exactly these classes, no hooks), all
    parameters trainable, on CPU, whose output is one vector of logits per record.
    """
    leaves = _sequential_leaves(model)
    if isinstance(leaves, str):
        return leaves
    if _global_hooks():
        return "global module hooks are registered"
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
        if _has_hooks(layer):
            return f"{label} has hooks"
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


class _Op:
    """One layer of the fast path: forward on ``(K, W, features)`` activations and the
    matching backward (gradient with respect to its input)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, grad: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError


class _LinearOp(_Op):
    """``y = alpha * x W^T + b`` for all K models with one ``baddbmm``; ``alpha`` is a
    preceding dropout's ``1 / (1 - p)``, folded into the matrix product.

    Weights are stored ``(K, out, in)``, or transposed ``(K, in, out)`` when the layer
    widens (``out > in``): then the weight gradient is ``x^T dy``, which BLAS computes
    faster than ``dy^T x`` for such shapes.
    """

    def __init__(self, layers: list[nn.Linear], alpha: float, needs_input_grad: bool) -> None:
        self.transposed = layers[0].out_features > layers[0].in_features
        weight = torch.stack([layer.weight.detach() for layer in layers])
        self.weight = weight.transpose(1, 2).contiguous() if self.transposed else weight
        biases: list[torch.Tensor | None] = [layer.bias for layer in layers]
        self.bias: torch.Tensor | None = None
        if all(b is not None for b in biases):
            self.bias = torch.stack([b.detach() for b in biases if b is not None])
        self.grad_weight = torch.zeros_like(self.weight)
        self.grad_bias = None if self.bias is None else torch.zeros_like(self.bias)
        self.alpha = alpha
        self.needs_input_grad = needs_input_grad
        self.saved: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self.grad_in: torch.Tensor | None = None

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def gradients(self) -> list[torch.Tensor]:
        return [self.grad_weight] if self.grad_bias is None else [self.grad_weight, self.grad_bias]

    def export(self, layer: nn.Linear, k: int) -> None:
        layer.weight.copy_(self.weight[k].T if self.transposed else self.weight[k])
        if self.bias is not None:
            layer.bias.copy_(self.bias[k])

    def _matrix(self) -> torch.Tensor:
        """The right factor of ``x @ W^T``, ``(K, in, out)``."""
        return self.weight if self.transposed else self.weight.transpose(1, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k, w = h.shape[:2]
        if self.out is None or self.out.shape[:2] != (k, w):
            self.out = torch.empty(k, w, self.weight.shape[2 if self.transposed else 1],
                                   dtype=h.dtype)  # fmt: skip
        self.saved = h
        if self.bias is not None:
            return torch.baddbmm(self.bias.unsqueeze(1), h, self._matrix(), alpha=self.alpha,
                                 out=self.out)  # fmt: skip
        return self.out.baddbmm_(h, self._matrix(), beta=0.0, alpha=self.alpha)

    def backward(self, grad: torch.Tensor) -> torch.Tensor | None:
        h, alpha = self.saved, self.alpha
        assert h is not None
        if self.transposed:  # dW^T = alpha * x^T dy
            self.grad_weight.baddbmm_(h.transpose(1, 2), grad, beta=0.0, alpha=alpha)
        else:  # dW = alpha * dy^T x
            self.grad_weight.baddbmm_(grad.transpose(1, 2), h, beta=0.0, alpha=alpha)
        if self.grad_bias is not None:
            torch.sum(grad, dim=1, out=self.grad_bias)
        self.saved = None
        if not self.needs_input_grad:
            return None
        if self.grad_in is None or self.grad_in.shape != h.shape:
            self.grad_in = torch.empty_like(h)
        weight = self.weight.transpose(1, 2) if self.transposed else self.weight
        return self.grad_in.baddbmm_(grad, weight, beta=0.0, alpha=alpha)


class _ReLUOp(_Op):
    """ReLU in place on a Linear's fresh output (else into its own buffer); its backward
    reads the output, which any dropout fused behind it has masked, so one
    ``threshold_backward`` is the gradient of both."""

    def __init__(self, in_place: bool) -> None:
        self.in_place = in_place
        self.out: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.in_place:
            self.out = h.clamp_min_(0.0)
        else:
            self.out = torch.clamp_min(h, 0.0)
        return self.out

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        assert self.out is not None
        result: torch.Tensor = torch.ops.aten.threshold_backward.grad_input(
            grad, self.out, 0.0, grad_input=grad
        )
        return result


class _ActivationOp(_Op):
    """The other activations, out of place, with aten's own backward formulas."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.saved: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Tanh):
            self.saved = torch.tanh(h)
        elif isinstance(layer, nn.Sigmoid):
            self.saved = torch.sigmoid(h)
        else:
            self.saved = h
            if isinstance(layer, nn.GELU):
                return F.gelu(h, approximate=layer.approximate)
            if isinstance(layer, nn.SiLU):
                return F.silu(h)
            assert isinstance(layer, nn.LeakyReLU)
            return F.leaky_relu(h, layer.negative_slope)
        return self.saved

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        layer, saved = self.layer, self.saved
        aten = torch.ops.aten
        result: torch.Tensor
        if isinstance(layer, nn.Tanh):
            result = aten.tanh_backward(grad, saved)
        elif isinstance(layer, nn.Sigmoid):
            result = aten.sigmoid_backward(grad, saved)
        elif isinstance(layer, nn.GELU):
            result = aten.gelu_backward(grad, saved, approximate=layer.approximate)
        elif isinstance(layer, nn.SiLU):
            result = aten.silu_backward(grad, saved)
        else:
            assert isinstance(layer, nn.LeakyReLU)
            result = aten.leaky_relu_backward(grad, saved, layer.negative_slope, False)
        return result


class _ScaleOp(_Op):
    """Multiplies by a dropout's pending ``1 / (1 - p)`` where it cannot be folded into
    the next Linear (before a non-homogeneous activation, or at the output)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.mul_(self.scale)


class _DropoutOp(_Op):
    """Zeroes each element with probability ``p``; the ``1 / (1 - p)`` rescaling is a
    separate scale (folded into the next Linear where possible).

    The mask of an element is one 16-bit lane of a 64-bit word from a numpy ``PCG64``
    stream (four elements per random word, instead of one 32-bit draw per element as
    ``torch.rand`` makes): an element is dropped when its lane is below
    ``round(p * 65536)``, so ``p`` is quantised to a multiple of ``2**-16`` (an
    absolute error below ``7.7e-6``). Where that would shift ``p`` or ``1 - p`` by more
    than 0.1 % of itself (``p`` below about 0.0076 or above 0.9924), 32-bit lanes are
    used instead (error below ``1.2e-10``).
    """

    def __init__(self, p: float, generator: np.random.PCG64, fused: bool) -> None:
        self.generator = generator
        self.fused = fused
        self.narrow = 0.5 / (65536 * min(p, 1 - p)) <= 1e-3
        lanes = 2**16 if self.narrow else 2**32
        # Lanes are read as signed integers, uniform on [-lanes/2, lanes/2): an element is
        # kept when its lane is at least the threshold.
        self.threshold = min(-(lanes // 2) + round(p * lanes), lanes // 2 - 1)
        self.mask: torch.Tensor | None = None

    def _draw(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """A 0/1 keep mask of ``shape`` (one integer comparison per element)."""
        n = math.prod(shape)
        per_word = 4 if self.narrow else 2
        words = self.generator.random_raw(-(-n // per_word))
        lanes = torch.from_numpy(words.view(np.int16 if self.narrow else np.int32))
        if self.mask is None or self.mask.shape != shape:
            self.mask = torch.empty(shape, dtype=dtype)
        return torch.ge(lanes[:n].view(shape), self.threshold, out=self.mask)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mask = self._draw(h.shape, h.dtype)
        return h.mul_(mask) if self.fused else h * mask

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        if self.fused:  # the ReLU before it masks the gradient
            return grad
        assert self.mask is not None
        return grad.mul_(self.mask)


def _compile_ops(
    layer_lists: list[list[nn.Module]], generator: np.random.PCG64
) -> tuple[list[_Op], list[tuple[_LinearOp, list[nn.Linear]]]]:
    """The fast path's ops for K models with identical layer lists, and each Linear op
    with the K modules it exports to."""
    ops: list[_Op] = []
    linears: list[tuple[_LinearOp, list[nn.Linear]]] = []
    pending = 1.0  # a dropout's 1 / (1 - p) not applied yet
    for position, first in enumerate(layer_lists[0]):
        same = [layers[position] for layers in layer_lists]
        previous = ops[-1] if ops else None
        if isinstance(first, nn.Linear):
            modules = [m for m in same if isinstance(m, nn.Linear)]
            op = _LinearOp(modules, alpha=pending, needs_input_grad=bool(linears))
            ops.append(op)
            linears.append((op, modules))
            pending = 1.0
        elif type(first) is nn.ReLU:
            ops.append(_ReLUOp(in_place=isinstance(previous, _LinearOp)))
        elif type(first) is nn.Dropout:
            if first.p == 0.0:
                continue
            fused = isinstance(previous, _ReLUOp) or (
                isinstance(previous, _DropoutOp) and previous.fused
            )
            ops.append(_DropoutOp(first.p, generator, fused=fused))
            pending /= 1.0 - first.p
        elif isinstance(first, _ACTIVATIONS):
            if pending != 1.0 and type(first) is not nn.LeakyReLU:  # ReLU-like: scale commutes
                ops.append(_ScaleOp(pending))
                pending = 1.0
            ops.append(_ActivationOp(first))
        # Identity and Flatten: the inputs are flattened to (K, W, features) up front.
    if pending != 1.0:
        ops.append(_ScaleOp(pending))
    return ops, linears


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
    ) -> None:
        self.models = models
        self.order = order
        self.recipe = recipe
        self.device = torch.device("cpu")
        self.inputs = inputs.detach().reshape(len(inputs), -1).contiguous()
        if recipe.loss is Loss.CROSS_ENTROPY:
            self.labels = labels.detach().long()
        else:
            self.labels = labels.detach().reshape(len(labels), -1).to(inputs.dtype).contiguous()
        layer_lists = [_sequential_leaves(m) for m in models]
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

    @torch.no_grad()
    def step(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """One optimizer step of every model that has a batch at step ``t``."""
        self.gradients(plan, t, epoch)
        if self.recipe.max_grad_norm is not None:
            _clip_per_model(self.grads, self.recipe.max_grad_norm)
        self.optimizer.step(self.group_grads, plan.active[t], plan.all_active[t])

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
        """Per-model mean losses ``(K,)`` and their gradient with respect to the logits."""
        k, w, classes = logits.shape
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
