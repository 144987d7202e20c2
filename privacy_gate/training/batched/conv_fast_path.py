"""The conv fast path: K convolutional networks trained as one network over stacked
channels (`conv_layers`), with autograd and no vmap.

The model's own forward runs on ``(W, K * C, *spatial)`` tensors, so it must treat
channels independently between its parametrised layers (activations, pooling, residual
additions, dropout, flattening before a Linear head do). That cannot be read off the
code: before training, a probe runs the stacked network and every model on the same
records (eval mode) and takes the path only when the outputs agree; otherwise the
general vmap path trains the model, with the reason logged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from privacy_gate.training.batched.batch_norm import refuse_single_values, update_running_statistics
from privacy_gate.training.batched.conv_dp_step import ConvDPGradients
from privacy_gate.training.batched.conv_layers import (
    STACKABLE,
    StackedBatchNorm,
    StackedRows,
    WindowMax1d,
    stack_layer,
    window_max_kernel,
)
from privacy_gate.training.batched.eligibility import (
    BatchingUnsupported,
    _global_hooks,
    _has_hooks,
)
from privacy_gate.training.batched.lora_layers import (
    SHAREABLE,
    LoraParts,
    SharedFrozen,
    StackedLora,
    active_copy_wrapper,
    adapter_weight,
    lora_parts,
)
from privacy_gate.training.batched.losses import _loss_terms, _raise_if_nonfinite
from privacy_gate.training.batched.optimizer import _clip_per_model, _StackedOptimizer
from privacy_gate.training.batched.poisson import PoissonStreams
from privacy_gate.training.batched.schedule import _EpochPlan, _Order
from privacy_gate.training.recipe import Loss, Recipe
from privacy_gate.training.steps import autocast

_PROBE_RECORDS = 4


Plan = dict[str, "LoraParts | str"]
"""Per layer the conv fast path replaces (by name): ``"stack"`` (its parameters train per
model), ``"shared"`` (frozen, held once), ``"window-max"`` (a tiling ``MaxPool1d``,
`WindowMax1d`) or a PEFT LoRA layer's `LoraParts`."""


def _layer_plan(model: nn.Module) -> Plan | str:
    """What the path does with each of ``model``'s layers, or why it cannot take it."""
    plan: Plan = {}
    unused: list[str] = []  # subtrees the forward never reaches or the plan covers whole
    for name, module in model.named_modules():
        if any(name == prefix or name.startswith(f"{prefix}.") for prefix in unused):
            continue
        label = f"{name or type(model).__name__} ({type(module).__name__})"
        if _has_hooks(module):
            return f"{label} has hooks"
        parts = lora_parts(module)
        if isinstance(parts, str):
            return f"{label} is a PEFT LoRA layer that the path cannot merge: {parts}"
        if parts is not None:
            if any(_has_hooks(inner) for inner in module.modules()):
                return f"{label} has hooks inside"
            plan[name] = parts
            unused.append(name)  # its inner layers: the merge covers them
            continue
        uses_copy = active_copy_wrapper(module)
        if uses_copy is False:
            return f"{label} (PEFT's ModulesToSaveWrapper) does not use its trained copy"
        if uses_copy:  # the frozen original and other adapters' copies never run
            active = module.active_adapters[0]
            unused.append(f"{name}.original_module")
            unused += [f"{name}.modules_to_save.{key}" for key in module.modules_to_save
                       if key != active]  # fmt: skip
            continue
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if window_max_kernel(module) is not None:
            plan[name] = "window-max"
        elif type(module) in STACKABLE:
            if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
                return f"{label} pads with {module.padding_mode!r}"
            weights = list(module.parameters(recurse=False))
            frozen = [p for p in weights if not p.requires_grad]
            if frozen and (len(frozen) != len(weights) or type(module) not in SHAREABLE):
                return (
                    f"{label} is partly frozen, or a frozen layer other than Conv1d, Conv2d "
                    "or Linear"
                )
            plan[name] = "shared" if frozen else "stack"
        elif own:
            return f"{label} holds parameters or buffers and is not one of the path's layers"
    trained = _trained_names(model, plan)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and name not in trained:
            return (
                f"the parameter {name!r} trains but the forward does not use it (an inactive "
                "adapter or module copy)"
            )
    if not _has_convs(plan, model) and not any(isinstance(w, LoraParts) for w in plan.values()):
        return "the model has no Conv1d or Conv2d layer"
    if not any(what == "stack" or isinstance(what, LoraParts) for what in plan.values()):
        return "the model has no trainable parameters"
    return plan


def _trained_names(model: nn.Module, plan: Plan) -> set[str]:
    """The names of the parameters the stacked layers train (as ``model`` names them)."""
    names: set[str] = set()
    for name, what in plan.items():
        prefix = f"{name}." if name else ""
        if isinstance(what, LoraParts):
            names |= {f"{prefix}{side}.{what.adapter}.weight" for side in ("lora_A", "lora_B")}
        else:
            names |= {f"{prefix}{p}" for p, _ in model.get_submodule(name).named_parameters()}
    return names


def _has_convs(plan: Plan, model: nn.Module) -> bool:
    return any(
        isinstance(model.get_submodule(name), (nn.Conv1d, nn.Conv2d))
        or (isinstance(what, LoraParts) and not isinstance(what.base, nn.Linear))
        for name, what in plan.items()
    )


def conv_fast_path_problem(model: nn.Module, inputs: torch.Tensor) -> str | None:
    """Why ``model`` cannot take the conv fast path (None: it may; the probe of
    `_ConvEnsemble` still has to agree).

    The path takes models with at least one ``Conv1d``/``Conv2d`` or PEFT LoRA layer,
    whose layers with parameters or buffers are exactly ``Conv1d``, ``Conv2d`` (zero
    padding), ``Linear``, ``BatchNorm1d``, ``BatchNorm2d`` or ``GroupNorm`` (trainable,
    or for the first three frozen alike in every model), PEFT LoRA layers over a frozen
    Conv1d/Conv2d/Linear (`lora_layers`) and PEFT's ``modules_to_save`` copies; no hooks;
    inputs ``(N, C, L)`` or ``(N, C, H, W)`` (``(N, F)`` for LoRA on Linear layers only)
    in the parameters' dtype.
    """
    if _global_hooks():
        return "global module hooks are registered"
    plan = _layer_plan(model)
    if isinstance(plan, str):
        return plan
    dims = (3, 4) if _has_convs(plan, model) else (2,)
    if inputs.dim() not in dims:
        wanted = "(N, C, L) or (N, C, H, W)" if dims != (2,) else "(N, F)"
        return f"the inputs have shape {tuple(inputs.shape)}, not {wanted}"
    dtype = next(iter(model.parameters())).dtype
    if inputs.dtype != dtype:
        return f"the inputs ({inputs.dtype}) and parameters ({dtype}) differ in dtype"
    return None


def _shape(layer: nn.Module) -> tuple[int, ...]:
    return tuple(next(iter(layer.parameters())).shape)


def _stacked_layer(
    name: str, what: LoraParts | str, layers: list[nn.Module], rows: StackedRows
) -> nn.Module:
    """The stacked layer for the K models' layers ``name`` (see `Plan`)."""
    trains = [[p.requires_grad for p in layer.parameters()] for layer in layers]
    if any(flags != trains[0] for flags in trains[1:]):
        raise BatchingUnsupported(
            f"the reference models' layer {name} trains different parameters (the factory "
            "freezes them per seed)"
        )
    if what == "stack":
        return stack_layer(layers, rows)
    first = layers[0]
    if what == "window-max":
        kernel = window_max_kernel(first)
        assert kernel is not None
        return WindowMax1d(kernel)
    if isinstance(what, LoraParts):
        parts = [lora_parts(layer) for layer in layers]
        if not all(isinstance(p, LoraParts) for p in parts):
            raise BatchingUnsupported(f"the reference models' layer {name} differ in kind")
        shapes = {
            (p.adapter, p.scaling, _shape(p.a), _shape(p.b))
            for p in parts
            if isinstance(p, LoraParts)
        }
        if len(shapes) > 1:
            raise BatchingUnsupported(
                f"the reference models' LoRA layer {name} differs in adapter, scaling or rank"
            )
        frozen = [dict(p.base.named_parameters()) for p in parts]  # type: ignore[union-attr]
    else:
        frozen = [dict(layer.named_parameters()) for layer in layers]
    for other in frozen[1:]:
        for key, tensor in frozen[0].items():
            if other[key] is not tensor and not torch.equal(other[key], tensor):
                raise BatchingUnsupported(
                    f"the frozen weights of {name} differ between reference models (the "
                    "factory initialises them per seed), so they cannot be held once"
                )
    if isinstance(what, LoraParts):
        return StackedLora(parts)  # type: ignore[arg-type]
    assert isinstance(first, nn.Conv1d | nn.Conv2d | nn.Linear)
    return SharedFrozen(first, len(layers))


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class _ConvEnsemble:
    """K convolutional networks as one stacked network (see the module docstring)."""

    def __init__(
        self,
        models: list[nn.Module],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        recipe: Recipe,
        order: _Order,
        streams: PoissonStreams | None = None,
    ) -> None:
        self.models, self.order, self.recipe = models, order, recipe
        self.inputs = inputs
        self.labels = labels.long() if recipe.loss is Loss.CROSS_ENTROPY else labels
        self.device = inputs.device
        self.rows = StackedRows()
        self.template = copy.deepcopy(models[0]).train()
        self.stacked: dict[str, nn.Module] = {}
        plan = _layer_plan(models[0])
        if isinstance(plan, str):
            raise BatchingUnsupported(plan)
        by_model = [dict(m.named_modules()) for m in models]
        for name, what in plan.items():
            layers = [modules[name] for modules in by_model]
            stacked = _stacked_layer(name, what, layers, self.rows)
            _replace(self.template, name, stacked)
            self.stacked[name] = stacked
        self.params: list[torch.Tensor] = [
            p for layer in self.stacked.values() for p in layer.parameters()
        ]
        self.param_names = [
            f"{n}.{p}" for n, layer in self.stacked.items() for p, _ in layer.named_parameters()
        ]
        self.optimizer = _StackedOptimizer(self.params, order.groups, recipe)
        self.batch_norms = {
            name: layer
            for name, layer in self.stacked.items()
            if isinstance(layer, StackedBatchNorm) and layer.tracks
        }
        self.dp_gradients: ConvDPGradients | None = None
        if recipe.dp is not None and streams is not None:
            self.dp_gradients = ConvDPGradients(
                self.template, self.param_names, models[0], recipe.loss, recipe.dp, streams,
                order.ids,
            )  # fmt: skip
        self._plan: _EpochPlan | None = None
        self._full: list[bool] = []
        self._probe()
        self.first_step = True

    @torch.no_grad()
    def _probe(self) -> None:
        """Run the stacked network and each model on the same records, in eval mode:
        a forward that mixes channels (or reshapes by channel count) disagrees."""
        x = self.inputs[:_PROBE_RECORDS]
        k = len(self.models)
        self.template.eval()
        restore = self._perturb_adapters()
        try:
            stacked = self.template(x.repeat(1, k, *([1] * (x.dim() - 2))))
            wanted = [model.eval()(x) for model in self.models]
            got = stacked.reshape(len(x), k, -1)
            for j, want in enumerate(wanted):
                torch.testing.assert_close(
                    got[:, j], want.reshape(len(x), -1), rtol=1e-3, atol=1e-4
                )
        except Exception as error:
            raise BatchingUnsupported(
                "the conv fast path's probe found that the forward does not treat stacked "
                f"channels independently: {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}"
            ) from error
        finally:
            restore()
            self.template.train()
            for model in self.models:
                model.train()

    @torch.no_grad()
    def _perturb_adapters(self) -> Callable[[], None]:
        """Give every LoRA ``B`` random values (in the stacked layer and each model alike)
        for the probe, and return what puts the trained values back: PEFT starts ``B`` at
        zero, where an adapter branch computed wrongly would agree with the models."""
        generator = torch.Generator().manual_seed(0)
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, layer in self.stacked.items():
            if not isinstance(layer, StackedLora):
                continue
            values = layer.perturbed(generator)
            targets = [
                adapter_weight(holder, "lora_B", layer.adapter)
                for holder in (layer, *(m.get_submodule(name) for m in self.models))
            ]
            for target, value in zip(targets, [values, *values], strict=True):
                saved.append((target, target.detach().clone()))
                target.copy_(value)

        @torch.no_grad()
        def restore() -> None:
            for target, value in saved:
                target.copy_(value)

        return restore

    def step(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """One optimizer step of every model that has a batch at step ``t``."""
        if self.dp_gradients is not None:
            self._private_step(plan, t, epoch)
            return
        losses = self._losses(plan, t)
        if not bool(torch.isfinite(losses).all()):
            _raise_if_nonfinite(losses, plan.active[t], epoch, self.order.ids)
        for p in self.params:
            p.grad = None
        losses.sum().backward()  # type: ignore[no-untyped-call]
        grads = [p.grad for p in self.params]
        if self.first_step:
            self._refuse_unused(grads)
        if self.recipe.max_grad_norm is not None:
            _clip_per_model(grads, self.recipe.max_grad_norm)  # type: ignore[arg-type]
        self.optimizer.step(
            self.optimizer.group_views(grads),  # type: ignore[arg-type]
            plan.active[t],
            plan.all_active[t],
        )
        self._move_running_statistics(plan.active[t])

    def _private_step(self, plan: _EpochPlan, t: int, epoch: int) -> None:
        """DP-SGD (`conv_dp_step`): per-record gradients of the stacked rows."""
        assert self.dp_gradients is not None
        index = plan.index[t]  # (K, W)
        x = self.inputs[index]
        rows = x.transpose(0, 1).reshape(index.shape[1], -1, *x.shape[3:])
        y = self.labels[index].transpose(0, 1)
        params = dict(zip(self.param_names, (p.detach() for p in self.params), strict=True))
        grads = self.dp_gradients(params, rows, y, plan, t, epoch)
        self.optimizer.step(self.optimizer.group_views(grads), plan.active[t], plan.all_active[t])

    def _losses(self, plan: _EpochPlan, t: int) -> torch.Tensor:
        """Per-model mean losses ``(K,)`` of step ``t``, on the stacked network."""
        index = plan.index[t]  # (K, W)
        k, width = index.shape
        x = self.inputs[index]  # (K, W, C, *spatial)
        x = x.transpose(0, 1).reshape(width, -1, *x.shape[3:])
        self.rows.weight, self.rows.count = plan.weight[t].T, plan.count[t]
        self.rows.full = self._full_steps(plan)[t]
        y = self.labels[index]
        with autocast(self.recipe, self.device):
            logits = self.template(x).reshape(width, k, -1).transpose(0, 1)  # (K, W, out)
            if self.recipe.loss is Loss.CROSS_ENTROPY:
                flat = logits.reshape(k * width, -1)
                terms = _loss_terms(flat, y.reshape(-1), self.recipe.loss)
            else:
                terms = _loss_terms(logits, y.reshape(k, width, -1), self.recipe.loss)
        terms = terms.reshape(k, width, -1)  # (K, W, elements per record)
        per_record = terms.sum(dim=2)
        return (per_record * plan.weight[t]).sum(dim=1) / (plan.count[t] * terms.shape[2])

    def _full_steps(self, plan: _EpochPlan) -> list[bool]:
        """Per step of the epoch: no model has a padded row or is idle (computed once
        per epoch, so a step does not wait for the device)."""
        if self._plan is not plan:
            width = plan.index.shape[2]
            self._plan = plan
            # every row real: idle models (count clamped to 1, weight 0) are not full
            self._full = (plan.weight.sum(dim=2) == width).all(dim=1).tolist()
        return self._full

    def _move_running_statistics(self, active: torch.Tensor) -> None:
        for name, layer in self.batch_norms.items():
            if layer.moments is None:  # a full step: torch's BatchNorm moved them
                continue
            refuse_single_values(layer.values, active, name)
            update_running_statistics(
                layer.running, self.models[0].get_submodule(name),  # type: ignore[arg-type]
                *layer.moments, layer.values, active,
            )  # fmt: skip

    def _refuse_unused(self, grads: list[torch.Tensor | None]) -> None:
        """As the vmap path: a layer without a gradient would still be updated."""
        unused = [name for name, g in zip(self.param_names, grads, strict=True) if g is None]
        if unused:
            raise BatchingUnsupported(
                f"parameter(s) {', '.join(unused)} get no gradient in the forward pass."
            )
        self.first_step = False

    @torch.no_grad()
    def export(self, k: int) -> None:
        """Copy model ``k``'s trained weights and BatchNorm buffers into its module."""
        for name, layer in self.stacked.items():
            layer.export(self.models[k].get_submodule(name), k)  # type: ignore[operator]
