"""RMIA (Zarifzadeh et al. 2024) on the release candidate: the likelihood ratio of a
record's score against the population's, with the prior ``Pr(x)`` from the reference
models (online) or their OUT side only (offline, with its ``a``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

from privacy_gate.attacks.registry import AttackInputs, AttackSpec
from privacy_gate.attacks.roc import roc_and_auc
from privacy_gate.record_stats import _for_each_chunk

__all__ = [
    "RMIA_OFFLINE_A_FALLBACK",
    "RMIA_OFFLINE_A_GRID",
    "SPECS",
    "rmia",
    "tune_rmia_offline_a",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
RMIA_OFFLINE_A_GRID = tuple(round(0.05 * i, 2) for i in range(21))
"""Values of RMIA's offline ``a`` tried when it is tuned."""
RMIA_OFFLINE_A_FALLBACK = 0.3
"""The paper's value, used when fewer than three reference models leave none to tune on."""


def rmia(
    target: FloatArray,
    reference_scores: NDArray[np.floating[Any]],
    reference_masks: BoolArray,
    population: BoolArray,
    *,
    gamma: float,
    offline_a: float | None,
) -> FloatArray:
    """RMIA (Zarifzadeh et al. 2024) with ``p = sigmoid(score)``.

    ``LR(x) = p_target(x) / Pr(x)``. Online, ``Pr(x)`` is the balanced mixture
    ``(mean_in + mean_out) / 2`` of the reference models' ``p`` (the paper's average
    over models of which half hold x; with unbalanced masks a plain mean would lean
    towards the larger side); a record IN or OUT for every model takes the mean of all.
    Offline, ``Pr(x) = ((1 + a) * mean_out + (1 - a)) / 2``. The membership score is the
    share of population records ``z`` (``population``, x itself excluded) with
    ``LR(x) / LR(z) >= gamma``.

    Args:
        target: ``(n_records,)`` scores under the release candidate.
        reference_scores: ``(n_reference_models, n_records)``.
        reference_masks: ``(n_reference_models, n_records)``.
        population: ``(n_records,)`` records usable as the population z.
    """
    (prior,) = _rmia_priors(reference_scores, reference_masks, (offline_a,))
    return _rmia_scores(target, prior, population, gamma)


def _rmia_priors(
    reference_scores: NDArray[np.floating[Any]],
    reference_masks: BoolArray,
    offline_as: tuple[float | None, ...],
) -> list[FloatArray]:
    """``Pr(x)`` of RMIA for each ``offline_a`` (None: online), in one pass over the scores.

    Column chunks small enough to stay in the CPU cache, so no full-size float64 copy of
    the scores is made. The sums are those of ``np.where(mask, expit(scores), 0).sum(axis=0)``
    over the rows in the same order (a product with 1.0 or 0.0 is exact for finite values;
    non-finite columns take the definition).
    """
    n_models, n_records = reference_scores.shape
    sum_all = np.empty(n_records)
    sum_out = np.empty(n_records)
    n_out = n_models - reference_masks.sum(axis=0, dtype=np.int64)
    n_in = n_models - n_out

    def work(cols: slice, buffers: list[FloatArray]) -> None:
        shape = (n_models, cols.stop - cols.start)
        p, is_out = (b[: shape[0] * shape[1]].reshape(shape) for b in buffers)
        np.copyto(p, reference_scores[:, cols], casting="unsafe")
        special.expit(p, out=p)
        sum_all[cols] = p.sum(axis=0)
        np.logical_not(reference_masks[:, cols], out=is_out, casting="unsafe")
        is_out *= p
        sums = is_out.sum(axis=0)
        bad = np.flatnonzero(np.isnan(sums))
        if bad.size:  # NaN * 0 is NaN where np.where would give 0: use the definition
            # (on C-ordered copies of at least two columns, summed row by row like the rest)
            take = np.r_[bad, bad] if len(bad) == 1 < shape[1] else bad
            chosen = np.ascontiguousarray(~reference_masks[:, cols][:, take])
            redo = np.where(chosen, np.ascontiguousarray(p[:, take]), 0.0).sum(axis=0)
            sums[bad] = redo[: len(bad)]
        sum_out[cols] = sums

    _for_each_chunk(n_models, n_records, 2, work)
    mean_all = sum_all / n_models
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_out = sum_out / n_out
        mixture = 0.5 * ((sum_all - sum_out) / n_in + mean_out)
    online = np.where((n_in > 0) & (n_out > 0), mixture, mean_all)
    return [online if a is None else ((1.0 + a) * mean_out + (1.0 - a)) / 2.0 for a in offline_as]


def tune_rmia_offline_a(
    reference_scores: NDArray[np.floating[Any]],
    reference_masks: BoolArray,
    *,
    gamma: float,
    grid: tuple[float, ...] = RMIA_OFFLINE_A_GRID,
) -> float | None:
    """RMIA's offline ``a``, tuned on one reference model as in Zarifzadeh et al. (2024).

    Reference model 0 plays the release candidate: its IN records are the members, its
    OUT records the population, and the other models' OUT scores give the prior. The
    ``a`` of the grid with the highest attack AUC wins (the smallest on ties). None when
    fewer than three models or no member and non-member of model 0 leave nothing to
    tune on.

    Args:
        reference_scores: ``(n_reference_models, n_records)``.
        reference_masks: ``(n_reference_models, n_records)``.
    """
    n_models = reference_scores.shape[0]
    members = np.asarray(reference_masks[0], dtype=bool)
    if n_models < 3 or members.all() or not members.any():
        return None
    (mean_out,) = _rmia_priors(reference_scores[1:], reference_masks[1:], (1.0,))
    usable = np.isfinite(mean_out)
    if not usable.any() or members[usable].all() or not members[usable].any():
        return None
    target = np.asarray(reference_scores[0], dtype=np.float64)[usable]
    is_member, mean_out = members[usable], mean_out[usable]
    best: tuple[float, float] | None = None
    for a in grid:
        prior = ((1.0 + a) * mean_out + (1.0 - a)) / 2.0
        _, _, auc = roc_and_auc(_rmia_scores(target, prior, ~is_member, gamma), is_member)
        if best is None or auc > best[1]:
            best = (a, auc)
    return None if best is None else best[0]


def _rmia_scores(
    target: FloatArray, prior: FloatArray, population: BoolArray, gamma: float
) -> FloatArray:
    """RMIA's membership score from the prior ``Pr(x)`` (see `rmia`)."""
    p_target = special.expit(target)
    with np.errstate(divide="ignore"):
        log_ratio = np.log(p_target) - np.log(prior)
    ordered = np.sort(log_ratio[population])
    # z counts when LR(z) <= LR(x) / gamma; x itself never does (gamma > 1), so "z != x"
    # holds for every x. All records share one denominator: dividing a non-member's count
    # by one fewer would rank non-members above members with the same count.
    dominated = np.searchsorted(ordered, log_ratio - np.log(gamma), side="right")
    return np.asarray(dominated / max(len(ordered), 1), dtype=np.float64)


def _offline_a(inputs: AttackInputs) -> tuple[float, str]:
    """The offline ``a`` and how it was chosen: given, tuned, or the paper's fallback."""

    def choose() -> tuple[float, str]:
        if inputs.offline_a is not None:
            return inputs.offline_a, "given"
        tuned = tune_rmia_offline_a(
            inputs.reference_scores, inputs.reference_masks, gamma=inputs.gamma
        )
        return (tuned, "tuned") if tuned is not None else (RMIA_OFFLINE_A_FALLBACK, "fallback")

    return inputs.shared("rmia_offline_a", choose)  # type: ignore[no-any-return]


def _priors(inputs: AttackInputs) -> list[FloatArray]:
    """Both variants' priors from one pass over the reference scores."""
    return inputs.shared(  # type: ignore[no-any-return]
        "rmia_priors",
        lambda: _rmia_priors(
            inputs.reference_scores, inputs.reference_masks, (None, _offline_a(inputs)[0])
        ),
    )


def _online(inputs: AttackInputs) -> FloatArray:
    return _rmia_scores(inputs.target, _priors(inputs)[0], ~inputs.is_member, inputs.gamma)


def _offline(inputs: AttackInputs) -> FloatArray:
    return _rmia_scores(inputs.target, _priors(inputs)[1], ~inputs.is_member, inputs.gamma)


def _parameters(inputs: AttackInputs) -> dict[str, Any]:
    a, source = _offline_a(inputs)
    return {"rmia_offline_a": a, "rmia_offline_a_source": source}


SPECS = (
    AttackSpec("rmia_online", _online, single_label_only=True, parameters=_parameters),
    AttackSpec("rmia_offline", _offline, single_label_only=True, parameters=_parameters),
)
"""RMIA online and offline (one true label per record), in the report's order."""
