"""A frozen trunk computed once: the leading layers of a fine-tune whose weights are all
frozen and whose output does not depend on training (no dropout, no batch statistics)
give every reference model the same features, so they are computed once per record and
the K trainable heads train on them as one batched ensemble.

The split comes from the traced forward (`chain.layer_chain` with frozen modules as
single layers: a pretrained ResNet trunk is one layer however it is built), and it is
verified, not assumed: the trunk gives the same output twice in training mode and the
same output for a record whether it is computed alone or in a batch (batch statistics
would differ), and every reference model's trunk holds the same weights (a factory that
initialises the frozen part per seed would give K different trunks). Otherwise the
reason is returned and the whole network trains as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from privacy_gate.training.batched.chain import layer_chain
from privacy_gate.training.weights import weights_sha256

__all__ = ["FrozenSplit", "frozen_features", "same_trunks", "split_frozen_prefix"]

_TRAINING_DEPENDENT = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_PROBE = 8
_CHUNK = 1024


@dataclass(frozen=True)
class FrozenSplit:
    """``trunk``: the frozen leading layers; ``head``: the layers that train."""

    trunk: tuple[nn.Module, ...]
    head: tuple[nn.Module, ...]

    def describe(self) -> str:
        names = ", ".join(type(layer).__name__ for layer in self.trunk)
        return f"frozen trunk computed once ({names})"


def _run(layers: tuple[nn.Module, ...], inputs: torch.Tensor) -> torch.Tensor:
    out = inputs
    for layer in layers:
        out = layer(out)
    return out


def split_frozen_prefix(model: nn.Module, inputs: torch.Tensor) -> FrozenSplit | str:
    """``model``'s frozen trunk and trainable head, or why it has none to compute once
    (``inputs``: a few records, for the determinism probe)."""
    chain = layer_chain(model, frozen_leaves=True)
    if isinstance(chain, str):
        return f"no frozen trunk to compute once: {chain}"
    n = 0
    while n < len(chain) and not any(p.requires_grad for p in chain[n].parameters()):
        n += 1
    trunk, head = tuple(chain[:n]), tuple(chain[n:])
    if not any(True for layer in trunk for _ in layer.parameters()):
        return "no frozen layers with weights lead the network"
    if not any(p.requires_grad for layer in head for p in layer.parameters()):
        return "nothing trains after the frozen layers"
    for layer in trunk:
        for name, module in layer.named_modules():
            if isinstance(module, _TRAINING_DEPENDENT):
                where = f"{type(layer).__name__}.{name}" if name else type(layer).__name__
                return (
                    f"the frozen trunk's {where} ({type(module).__name__}) computes otherwise "
                    "in training: its output is not the same in every step"
                )
    probe = inputs[:_PROBE]
    with torch.no_grad():
        states = [layer.training for layer in trunk]
        for layer in trunk:
            layer.train()
        try:
            first, again = _run(trunk, probe), _run(trunk, probe)
            alone = _run(trunk, probe[:1])
        finally:
            for layer, state in zip(trunk, states, strict=True):
                layer.train(state)
    if not torch.equal(first, again):
        return "the frozen trunk gives different outputs for the same records (random in training)"
    if not torch.allclose(first[:1], alone, rtol=1e-5, atol=1e-6):
        return "the frozen trunk's output for a record depends on its batch"
    return FrozenSplit(trunk, head)


def same_trunks(splits: list[FrozenSplit]) -> bool:
    """Whether every model's trunk holds the same weights (one set of features serves
    all)."""
    return len({weights_sha256(nn.ModuleList(split.trunk)) for split in splits}) == 1


def frozen_features(split: FrozenSplit, inputs: torch.Tensor) -> torch.Tensor:
    """The trunk's output for every record, in training mode as the candidate saw it
    (checked deterministic), computed in chunks without gradients."""
    states = [layer.training for layer in split.trunk]
    try:
        for layer in split.trunk:
            layer.train()
        with torch.no_grad():
            return torch.cat(
                [_run(split.trunk, inputs[i : i + _CHUNK]) for i in range(0, len(inputs), _CHUNK)]
            )
    finally:
        for layer, state in zip(split.trunk, states, strict=True):
            layer.train(state)
