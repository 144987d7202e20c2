"""BatchNorm in a batched ensemble: each model normalises with the moments of its own
real rows, and its running statistics move as ``torch.nn.BatchNorm`` moves them.

A stacked step pads every model's batch to one width with weight-0 rows (see
`schedule`). In ``train_one`` model ``k`` sees only its ``n_k`` real rows, so here the
batch mean and (biased) variance are weighted sums over the rows with weight 1 and
``n_k * prod(spatial)`` values per channel; padded rows are normalised too, but their
loss weight is 0, so they change neither the moments nor any gradient.

The running statistics are updated outside the forward pass, for the models that take
a step only (a model whose epoch is over keeps its buffers, as it keeps its weights):
``running = (1 - m) * running + m * batch`` with the unbiased batch variance
(``n / (n - 1)``), ``num_batches_tracked += 1``, and ``m = 1 / num_batches_tracked``
when ``momentum`` is None (a cumulative average), exactly as ``nn.BatchNorm`` does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from privacy_gate.training.steps import TrainingError

BatchNorm = nn.modules.batchnorm._BatchNorm


def masked_moments(
    x: torch.Tensor, weight: torch.Tensor, count: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` ``(W, C, *spatial)`` over its rows
    of weight 1: ``weight`` is ``(W, C)`` (0 or 1 per row and channel), ``count`` ``(C,)``
    the real rows behind each channel."""
    extra = x.dim() - 2
    rows = weight.reshape(*weight.shape, *([1] * extra))
    reduce = (0, *range(2, x.dim()))
    values = count * math.prod(x.shape[2:])
    mean = (x * rows).sum(dim=reduce) / values
    centred = x - mean.reshape(1, -1, *([1] * extra))
    variance = (centred.square() * rows).sum(dim=reduce) / values
    return mean, variance


def normalise(
    x: torch.Tensor,
    mean: torch.Tensor,
    variance: torch.Tensor,
    eps: float,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
) -> torch.Tensor:
    """``(x - mean) / sqrt(variance + eps) * scale + shift`` per channel (dim 1)."""
    shape = (1, -1, *([1] * (x.dim() - 2)))
    out = (x - mean.reshape(shape)) * torch.rsqrt(variance + eps).reshape(shape)
    if scale is not None:
        out = out * scale.reshape(shape)
    if shift is not None:
        out = out + shift.reshape(shape)
    return out


def refuse_single_values(values: torch.Tensor, active: torch.Tensor, name: str) -> None:
    """``nn.BatchNorm`` refuses to train on one value per channel (a batch of one record
    without spatial dims); so does the ensemble, for the models that step."""
    if bool(((values <= 1) & active).any()):
        raise TrainingError(
            f"BatchNorm layer {name!r} got one value per channel in a training batch (a "
            "last batch of a single record), where torch's BatchNorm raises 'Expected more "
            "than 1 value per channel when training'. HINT: change the batch size so that "
            "no subset leaves a last batch of one record."
        )


@torch.no_grad()
def update_running_statistics(
    buffers: dict[str, torch.Tensor],
    layer: BatchNorm,
    mean: torch.Tensor,
    variance: torch.Tensor,
    values: torch.Tensor,
    active: torch.Tensor,
) -> None:
    """Move the stacked buffers ``running_mean``/``running_var`` ``(K, C)`` and
    ``num_batches_tracked`` ``(K,)`` of one layer for the ``active`` models, as
    ``nn.BatchNorm``'s training forward does."""
    tracked = buffers["num_batches_tracked"]
    tracked.add_(active.to(tracked.dtype))
    if layer.momentum is None:
        factor = (1.0 / tracked.clamp(min=1).to(mean.dtype)).unsqueeze(1)
    else:
        factor = torch.full_like(mean[:, :1], float(layer.momentum))
    unbiased = variance * (values / (values - 1).clamp(min=1)).unsqueeze(1)
    keep = active.unsqueeze(1)
    for name, batch in (("running_mean", mean), ("running_var", unbiased)):
        running = buffers[name]
        moved = running * (1 - factor) + batch.detach().to(running.dtype) * factor
        running.copy_(torch.where(keep, moved, running))
