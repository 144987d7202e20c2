"""DP-SGD's Poisson batches for a batched ensemble, drawn as Opacus draws them for
`dp_sgd.train_one_dp`, so that model ``k`` of the ensemble sees the very batches and
noise its one-at-a-time training would.

`train_one_dp` hands Opacus a ``DataLoader`` over the model's subset with a generator
seeded by the model's seed; Opacus' ``DPDataLoader`` samples each batch with
``torch.rand(n, generator) < q`` (``q = 1 / len(loader)``, ``int(1 / q)`` batches an
epoch), and every epoch's iterator first draws its base seed from the same generator.
Its noise comes from a second generator seeded with ``seed + 1``, one
``torch.normal`` per parameter in order. The streams here are those streams.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from privacy_gate.dp.recommend import dp_schedule
from privacy_gate.training.batched.schedule import _EpochPlan


def dp_steps_per_epoch(n_records: int, batch_size: int) -> int:
    """Opacus' steps per epoch (`privacy_gate.dp.recommend.dp_schedule`): ``int(1 / q)``
    with ``q = 1 / ceil(n / batch_size)``, one fewer than the loader's batches where the
    float reciprocal rounds down."""
    return dp_schedule(n_records, batch_size, 1)[1]


class PoissonStreams:
    """Per model: the sampling generator, the noise generator, the sampling rate, the
    steps per epoch and the expected batch size (Opacus' normalisation)."""

    def __init__(
        self,
        subsets: Sequence[NDArray[np.intp]],
        seeds: Sequence[int],
        batch_size: int,
        device: torch.device | None = None,
    ) -> None:
        self.subsets = [np.asarray(s, dtype=np.int64) for s in subsets]
        self.device = device or torch.device("cpu")
        # The loader's generator is a CPU one; the noise generator lives where the
        # parameters do, as `train_one_dp` builds it and Opacus draws on it.
        self.sampling = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.noise = [torch.Generator(device=self.device).manual_seed(seed + 1) for seed in seeds]
        # DPDataLoader samples at 1 / len(original loader) and runs int(1 / that) steps;
        # make_private then normalises (and accounts) with 1 / len(DPDataLoader).
        self.rate = [1 / math.ceil(len(s) / batch_size) for s in subsets]
        self.steps = [dp_steps_per_epoch(len(s), batch_size) for s in subsets]
        self.expected = [int(len(s) * (1 / n)) for s, n in zip(subsets, self.steps, strict=True)]
        self._divisor = torch.tensor(self.expected, device=self.device).clamp(min=1)

    def epoch(self, device: torch.device) -> _EpochPlan:
        """The next epoch's Poisson batches of every model as padded tables (weight 0
        for padding; a model with an empty batch still steps: noise only)."""
        drawn: list[list[NDArray[np.int64]]] = []
        for subset, generator, rate, steps in zip(
            self.subsets, self.sampling, self.rate, self.steps, strict=True
        ):
            torch.empty((), dtype=torch.int64).random_(generator=generator)  # base seed
            batches = []
            for _ in range(steps):
                mask = torch.rand(len(subset), generator=generator) < rate
                batches.append(subset[mask.nonzero().reshape(-1).numpy()])
            drawn.append(batches)
        n_steps = max(self.steps)
        width = max(1, max(len(b) for batches in drawn for b in batches))
        index = np.empty((n_steps, len(drawn), width), dtype=np.int64)
        counts = np.zeros((n_steps, len(drawn)), dtype=np.int64)
        for k, batches in enumerate(drawn):
            index[:, k] = self.subsets[k][0]  # padding: a record the model trains on
            for t, batch in enumerate(batches):
                index[t, k, : len(batch)] = batch
                if len(batch):  # padding repeats a record of this very batch (finite
                    index[t, k, len(batch) :] = batch[0]  # whenever the batch is)
                counts[t, k] = len(batch)
        model_steps = np.array(self.steps)
        weight = np.arange(width)[None, None, :] < counts[:, :, None]
        active = np.arange(n_steps)[:, None] < model_steps[None, :]
        return _EpochPlan(
            index=torch.from_numpy(index).to(device),
            weight=torch.from_numpy(weight.astype(np.float32)).to(device),
            count=torch.from_numpy(np.maximum(counts, 1).astype(np.float32)).to(device),
            active=torch.from_numpy(active).to(device),
            all_active=[bool(a) for a in np.asarray(active.all(axis=1)).tolist()],
            last_step=model_steps - 1,
        )

    def normalise(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` ``(K, ...)`` (model ``k``'s clipped, noised sum in row ``k``) divided,
        in place, by each model's expected batch size, as ``DPOptimizer.scale_grad``."""
        divisor = self._divisor.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
        return grad.div_(divisor)

    def noise_parts(
        self, k: int, shapes: Sequence[tuple[int, ...]], std: float, dtype: torch.dtype
    ) -> list[torch.Tensor]:
        """Model ``k``'s noise of one step, one tensor per parameter (its shape in the
        model), drawn in the model's parameter order, dtype and device as Opacus draws
        it."""
        return [
            torch.normal(0.0, std, size=tuple(s), generator=self.noise[k], device=self.device,
                         dtype=dtype)
            for s in shapes
        ]  # fmt: skip

    def draw_noise(
        self, k: int, shapes: Sequence[tuple[int, ...]], std: float, dtype: torch.dtype
    ) -> torch.Tensor:
        """Model ``k``'s noise of one step, flat (the general path's ``(K, P)`` row)."""
        return torch.cat([part.flatten() for part in self.noise_parts(k, shapes, std, dtype)])
