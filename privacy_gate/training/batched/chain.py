"""The chain of layers a module computes, read from its traced forward (``torch.fx``), so
that the MLP fast path recognises the network rather than the class that wraps it.

A LightningModule holding ``self.net`` (as every Lightning tutorial writes it), a forward
that calls ``self.encoder`` then ``self.head``, or activations written as functions
(``F.relu(self.fc1(x))``) compute the same chain of layers as a plain ``nn.Sequential``.
`layer_chain` returns that chain, made of the module's own layers (so training the chain
trains the module), or the reason it is not one, naming the operation that stopped it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["layer_chain", "sequential_leaves"]


def sequential_leaves(model: nn.Module) -> list[nn.Module] | str:
    """The layers of a (nested) plain ``nn.Sequential``, or why ``model`` is not one."""
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not a plain nn.Sequential"
    leaves: list[nn.Module] = []
    for child in model:
        if type(child) is nn.Sequential:
            inner = sequential_leaves(child)
            if isinstance(inner, str):
                return inner
            leaves += inner
        else:
            leaves.append(child)
    return leaves


def _slope(node: fx.Node) -> nn.Module | None:
    slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
    if isinstance(slope, bool) or not isinstance(slope, int | float):
        return None  # computed while tracing: not a fixed layer
    return nn.LeakyReLU(float(slope))


def _gelu(node: fx.Node) -> nn.Module | None:
    approximate = node.kwargs.get("approximate", "none")
    return nn.GELU(approximate=str(approximate)) if approximate in ("none", "tanh") else None


def _flatten(node: fx.Node) -> nn.Module | None:
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
    return nn.Flatten() if (start, end) == (1, -1) else None


_ELEMENTWISE: dict[str, Callable[[fx.Node], nn.Module | None]] = {
    "relu": lambda _: nn.ReLU(),
    "tanh": lambda _: nn.Tanh(),
    "sigmoid": lambda _: nn.Sigmoid(),
    "silu": lambda _: nn.SiLU(),
    "gelu": _gelu,
    "leaky_relu": _slope,
    "flatten": _flatten,
}
"""Functions and tensor methods that are a fast-path layer, by name."""

_FUNCTIONS: dict[Any, str] = {
    torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu", F.gelu: "gelu",
    F.leaky_relu: "leaky_relu", torch.flatten: "flatten",
}  # fmt: skip

_NO_EFFECT_KWARGS = {"inplace"}  # F.relu(x, inplace=True) computes the same values


def _describe(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    if target in (operator.getitem, operator.add, operator.mul):
        name = {operator.getitem: "indexing", operator.add: "+", operator.mul: "*"}[target]
    kind = {"call_module": "module", "call_function": "function", "call_method": "method"}
    return f"{kind.get(node.op, node.op)} {name!r}"


def _only_input(node: fx.Node, current: fx.Node) -> bool:
    """Whether ``node`` reads ``current`` as its first argument and no other tensor."""
    if not node.args or node.args[0] is not current:
        return False
    others: list[fx.Node] = []

    def note(other: fx.Node) -> fx.Node:
        others.append(other)
        return other

    fx.node.map_arg((node.args[1:], dict(node.kwargs)), note)
    return not others


def _layer(model: nn.Module, node: fx.Node) -> nn.Module | str:
    """The fast-path layer one traced operation is, or why it is none."""
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            return f"the forward calls {node.target} with more than its input"
        return model.get_submodule(str(node.target))
    if node.op == "call_function":
        name = _FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        name = str(node.target) if str(node.target) in _ELEMENTWISE else None
    else:
        name = None
    if name is None or set(node.kwargs) - _NO_EFFECT_KWARGS - {
        "negative_slope", "approximate", "start_dim", "end_dim"
    }:  # fmt: skip
        return f"the forward applies {_describe(node)}, which the MLP fast path does not take"
    layer = _ELEMENTWISE[name](node)
    if layer is None:
        return f"the forward applies {_describe(node)} with arguments the fast path does not take"
    return layer


_MISSING = object()
_PLAIN = (bool, int, float, str, bytes, type(None))


def _python_state(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """Every module's attributes (a shallow copy: what a forward could reassign)."""
    return [(module, dict(vars(module))) for module in model.modules()]


def _changed(state: list[tuple[nn.Module, dict[str, Any]]]) -> str | None:
    """The first attribute the traced forward changed (a step counter, a cache), or None."""
    for module, before in state:
        now = vars(module)
        for key in sorted(set(before) | set(now)):
            old, new = before.get(key, _MISSING), now.get(key, _MISSING)
            same_value = type(old) is type(new) and isinstance(old, _PLAIN) and old == new
            if old is not new and not same_value:
                return (
                    f"its forward changes the attribute {key!r} of {type(module).__name__} "
                    "(Python state that a traced chain would not reproduce)"
                )
    return None


class _FrozenLeaves(fx.Tracer):
    """Traces into modules as usual, but keeps a wholly frozen module (a pretrained trunk,
    however it is built inside) as one layer of the chain."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        weights = list(m.parameters())
        if weights and not any(p.requires_grad for p in weights):
            return True
        return bool(super().is_leaf_module(m, module_qualified_name))


def _traced_chain(model: nn.Module, frozen_leaves: bool = False) -> list[nn.Module] | str:
    tracer = _FrozenLeaves() if frozen_leaves else fx.Tracer()
    tracer.proxy_buffer_attributes = True  # a buffer written in forward shows in the graph
    state = _python_state(model)
    try:
        graph = tracer.trace(model)
    except Exception as error:  # data-dependent control flow, unsupported Python
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"its forward cannot be traced by torch.fx ({type(error).__name__}: {first})"
    finally:
        changed = _changed(state)
        for module, before in state:  # tracing ran the forward's Python once: undo it
            vars(module).clear()
            vars(module).update(before)
    if changed is not None:
        return changed
    nodes = list(graph.nodes)
    inputs = [node for node in nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        return f"its forward takes {len(inputs)} inputs, not one tensor"
    current, layers = inputs[0], []
    for node in nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            if node.args[0] is not current:
                return "its forward does not return the last layer's output (one tensor)"
            break
        if node.op == "get_attr":
            return f"its forward reads the tensor {node.target!r} directly, outside a layer"
        if not _only_input(node, current):
            return f"its forward is not a chain of layers: {_describe(node)} has other inputs"
        layer = _layer(model, node)
        if isinstance(layer, str):
            return layer
        layers.append(layer)
        current = node
    return layers


def layer_chain(model: nn.Module, *, frozen_leaves: bool = False) -> list[nn.Module] | str:
    """The layers ``model``'s forward applies one after another (the module's own
    objects, sharing its parameters), or why its forward is not such a chain.

    Every parameter must belong to exactly one layer of the chain: a layer used twice,
    or a parameter the forward never reaches, would train otherwise than the chain.
    With ``frozen_leaves`` a module whose weights are all frozen is one layer, whatever
    its inside (`frozen_prefix`); a plain ``nn.Sequential`` gives its leaves either way.
    """
    if type(model) is nn.Sequential:
        return sequential_leaves(model)
    chain = _traced_chain(model, frozen_leaves)
    if isinstance(chain, str):
        return chain
    seen: set[int] = set()
    for layer in chain:
        if id(layer) in seen and any(True for _ in layer.parameters()):
            return f"its forward applies the layer {type(layer).__name__} twice (shared weights)"
        seen.add(id(layer))
    in_chain = {id(p) for layer in chain for p in layer.parameters()}
    for name, parameter in model.named_parameters():
        if id(parameter) not in in_chain:
            return f"the parameter {name!r} is not used by the chain its forward computes"
    buffers = {id(b) for layer in chain for b in layer.buffers()}
    for name, buffer in model.named_buffers():
        if id(buffer) not in buffers:
            return f"the buffer {name!r} lies outside the chain its forward computes"
    return chain
