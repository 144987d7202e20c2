"""`train_batched`: K models of one architecture trained as one batched ensemble, on the
MLP fast path, the conv fast path or the general vmap path (package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.training.batched.chain import layer_chain
from privacy_gate.training.batched.conv_fast_path import _ConvEnsemble, conv_fast_path_problem
from privacy_gate.training.batched.eligibility import (
    FP16_MIXED_REASON,
    BatchingUnsupported,
    batching_problem,
)
from privacy_gate.training.batched.frozen_prefix import (
    FrozenSplit,
    frozen_features,
    same_trunks,
    split_frozen_prefix,
)
from privacy_gate.training.batched.mlp_fast_path import _MLPEnsemble, mlp_fast_path_problem
from privacy_gate.training.batched.poisson import PoissonStreams, dp_steps_per_epoch
from privacy_gate.training.batched.schedule import _Order, _plan_epoch, _step_groups
from privacy_gate.training.batched.shared_weights import share_frozen_weights, shared_note
from privacy_gate.training.batched.vmap_ensemble import _Ensemble
from privacy_gate.training.data_order import steps_per_epoch
from privacy_gate.training.dp_sgd import make_dp_compatible
from privacy_gate.training.recipe import Precision, Recipe
from privacy_gate.training.steps import ModelFactory, TrainingError, init_model

_LOG = logging.getLogger("privacy_gate.training")


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
    on_epoch_done: Callable[[int], None] | None = None,
    fast_path: bool = True,
    device: torch.device | str | None = None,
    frozen_trunk: bool = True,
    notes: dict[str, Any] | None = None,
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
        on_epoch_done: called with the epoch's index after every epoch of the ensemble
            (progress inside a long round).
        fast_path: False trains every model with the general vmap path, even those the
            MLP or conv fast path could take (for comparisons).
        device: where the ensemble trains (default: the inputs' device); models are
            initialised on the CPU first, so their initial weights do not depend on it.
        frozen_trunk: compute a frozen, deterministic trunk once and train only the heads
            (`frozen_prefix`); False trains every model whole (for comparisons).
        notes: filled with what the engine decided that the report should say
            (``frozen_trunk``: the trunk computed once, or why a model with frozen
            weights trains whole).

    Returns:
        K ordinary modules in eval mode on ``device`` holding the trained weights.

    Raises:
        BatchingUnsupported: the architecture cannot be batched (see `batching_problem`),
            or its forward fails under ``vmap``; train sequentially instead.
        TrainingError: a model's loss became NaN or infinite, or a subset is empty.
    """
    _check_inputs(inputs, labels, subsets, seeds)
    if not subsets:
        return []
    if recipe.precision is Precision.FP16_MIXED:
        raise BatchingUnsupported(FP16_MIXED_REASON)
    place = torch.device(device) if device is not None else inputs.device
    first = init_model(factory, seeds[0]).to(place)
    split = _frozen_split(first, inputs, recipe, place) if frozen_trunk else None
    head = nn.Sequential(*split.head) if isinstance(split, FrozenSplit) else first
    problem = batching_problem(head)
    if problem is not None:
        raise BatchingUnsupported(problem)
    models = _build_models(factory, first, seeds, place, dp=recipe.dp is not None)
    inputs, labels = inputs.to(place), labels.to(place)
    full_models = models
    if isinstance(split, FrozenSplit):
        splits = [split, *(_same_split(m, len(split.trunk)) for m in models[1:])]
        if same_trunks(splits):
            _LOG.info("Batched training on the %s.", split.describe())
            inputs = frozen_features(split, inputs)  # every model's trunk output, once
            models = [nn.Sequential(*s.head) for s in splits]  # the models' own layers
            split_note: str | None = split.describe()
        else:
            split_note = (
                "the whole network runs in every step: the frozen trunks differ between "
                "reference models (the factory initialises them per seed)"
            )
            problem = batching_problem(first)
            if problem is not None:
                raise BatchingUnsupported(problem)
    elif isinstance(split, str):
        split_note = f"the whole network runs in every step: {split}"
    else:
        split_note = None
    if notes is not None and split_note is not None:
        notes["frozen_trunk"] = split_note
    # Inside the ensemble the models are sorted by steps per epoch (most first), so
    # models that step together are contiguous (see `_StackedOptimizer`); ``ids[j]`` is
    # the caller's index of the model at position j.
    per_epoch = [
        dp_steps_per_epoch(len(s), recipe.batch_size)
        if recipe.dp is not None
        else steps_per_epoch(len(s), recipe.batch_size)
        for s in subsets
    ]
    ids = sorted(range(len(subsets)), key=lambda k: -per_epoch[k])
    order = _Order(ids, _step_groups([per_epoch[k] for k in ids]))
    sorted_models = [models[k] for k in ids]
    sorted_subsets, sorted_seeds = [subsets[k] for k in ids], [seeds[k] for k in ids]
    streams = None
    if recipe.dp is not None:
        streams = PoissonStreams(sorted_subsets, sorted_seeds, recipe.batch_size, place)
    try:
        trainer = _ensemble(
            fast_path, sorted_models, inputs, labels, recipe, sorted_seeds, order, streams
        )
    except BatchingUnsupported:
        raise
    except Exception as error:  # e.g. a factory whose models differ in shape
        raise BatchingUnsupported(
            f"the models cannot be stacked: {type(error).__name__}: {error}"
        ) from error
    shared = shared_note(models) if models is full_models else None
    if notes is not None and shared is not None:
        notes["shared_frozen_weights"] = shared
    for epoch in range(recipe.epochs):
        if streams is not None:
            plan = streams.epoch(trainer.device)
        else:
            plan = _plan_epoch(
                sorted_subsets, sorted_seeds, epoch, recipe.batch_size, trainer.device
            )
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
        if on_epoch_done is not None:
            on_epoch_done(epoch)
    for model in full_models:
        model.eval()
    return full_models


def _build_models(
    factory: ModelFactory, first: nn.Module, seeds: Sequence[int], place: torch.device, *, dp: bool
) -> list[nn.Module]:
    """The K models, each built after the last has given up its copy of the frozen
    weights they share (`share_frozen_weights`): K full models never exist at once."""
    if dp:  # the layers Opacus replaces, as train_one_dp replaces them
        first = make_dp_compatible(first, "reference model 0")
    models = [first]
    for k, seed in enumerate(seeds[1:], start=1):
        model = init_model(factory, seed).to(place)
        if dp:
            model = make_dp_compatible(model, f"reference model {k}")
        share_frozen_weights(first, model)
        models.append(model)
    return models


def _frozen_split(
    model: nn.Module, inputs: torch.Tensor, recipe: Recipe, place: torch.device
) -> FrozenSplit | str | None:
    """The frozen trunk to compute once, why there is none (a model with frozen
    weights), or None (every weight trains: nothing to say)."""
    if all(p.requires_grad for p in model.parameters()):
        return None
    if recipe.dp is not None:
        return "DP-SGD recipes train the whole network (per-record gradients of every layer)"
    if recipe.precision is not Precision.FLOAT32:
        return f"the recipe computes in {recipe.precision.value}, the trunk's cache in float32"
    return split_frozen_prefix(model, inputs[:8].to(place))


def _same_split(model: nn.Module, n_trunk: int) -> FrozenSplit:
    """Another model's split at the first model's place (same architecture)."""
    chain = layer_chain(model, frozen_leaves=True)
    if isinstance(chain, str):  # the same architecture traced once already
        raise BatchingUnsupported(f"the models cannot be split alike: {chain}")
    return FrozenSplit(tuple(chain[:n_trunk]), tuple(chain[n_trunk:]))


_TAKES = {  # (who, the fast paths' notes) per kind of recipe, for the log
    False: ("Batched training", {"mlp": "", "conv": "", "vmap": ""}),
    True: ("Batched DP-SGD", {"mlp": " (ghost clipping)", "conv": " (per-row gradients)",
                              "vmap": " (per-record gradients with torch.func)"}),
}  # fmt: skip


def _ensemble(
    fast_path: bool,
    models: list[nn.Module],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    seeds: Sequence[int],
    order: _Order,
    streams: PoissonStreams | None = None,
) -> _MLPEnsemble | _ConvEnsemble | _Ensemble:
    """The fastest path that can train these models: MLP, conv, else general vmap (the
    reasons for passing over the fast paths are logged); DP-SGD recipes take the same
    paths with their per-record gradients (``streams``)."""
    who, notes = _TAKES[recipe.dp is not None]
    if not fast_path:
        _LOG.info("%s takes the general vmap path: the caller asked for it.", who)
        return _Ensemble(models, inputs, labels, recipe, order, streams)
    mlp_reason = mlp_fast_path_problem(models[0], inputs, labels, recipe.loss)
    if mlp_reason is None and recipe.precision is not Precision.FLOAT32:
        mlp_reason = f"it computes in float32, the recipe in {recipe.precision.value}"
    if mlp_reason is None:
        _LOG.info("%s takes the MLP fast path%s.", who, notes["mlp"])
        return _MLPEnsemble(models, inputs, labels, recipe, seeds, order, streams)
    conv_reason = conv_fast_path_problem(models[0], inputs)
    if conv_reason is None:
        try:
            conv = _ConvEnsemble(models, inputs, labels, recipe, order, streams)
            _LOG.info("%s takes the conv fast path%s.", who, notes["conv"])
            return conv
        except BatchingUnsupported as unsupported:
            conv_reason = unsupported.reason
    if recipe.precision is not Precision.FLOAT32:
        raise BatchingUnsupported(
            f"the recipe trains in {recipe.precision.value}, and under torch.func.vmap autocast "
            "skips some operations (convolutions stay float32), so the general path would not "
            f"train as the candidate did (MLP fast path: {mlp_reason}; conv fast path: "
            f"{conv_reason})"
        )
    _LOG.info(
        "%s takes the general vmap path%s: MLP fast path: %s; conv fast path: %s.",
        who, notes["vmap"], mlp_reason, conv_reason,
    )  # fmt: skip
    return _Ensemble(models, inputs, labels, recipe, order, streams)
