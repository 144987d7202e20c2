"""Aggregate attacks on the release candidate: LiRA (online, offline, fixed variance)
and RMIA, each scored as a ROC over the candidate's members vs non-members.

Every attack maps a record's score under the release candidate to a membership score
(higher means more likely a member), using that record's reference-model moments. The
strongest attack (highest AUC; highest TPR at each FPR) is the one the gate sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from privacy_gate.record_stats import RecordMoments, _for_each_chunk

__all__ = [
    "AggregateResult",
    "Attack",
    "AttackResult",
    "lira_offline",
    "lira_online",
    "rmia",
    "roc_auc",
    "roc_curve",
    "run_attacks",
    "tpr_at_fpr",
    "tune_rmia_offline_a",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
_ROC_POINTS = 200
RMIA_OFFLINE_A_GRID = tuple(round(0.05 * i, 2) for i in range(21))
"""Values of RMIA's offline ``a`` tried when it is tuned."""
RMIA_OFFLINE_A_FALLBACK = 0.3
"""The paper's value, used when fewer than three reference models leave none to tune on."""


class Attack(str, Enum):
    LIRA_ONLINE = "lira_online"
    LIRA_ONLINE_FIXED_VARIANCE = "lira_online_fixed_variance"
    LIRA_OFFLINE = "lira_offline"
    LIRA_OFFLINE_FIXED_VARIANCE = "lira_offline_fixed_variance"
    RMIA_ONLINE = "rmia_online"
    RMIA_OFFLINE = "rmia_offline"


@dataclass(frozen=True)
class AttackResult:
    """ROC summary of one attack: AUC, TPR at each FPR and a thinned ROC curve."""

    auc: float
    tpr_at_fpr: Mapping[float, float]
    roc_fpr: FloatArray
    roc_tpr: FloatArray


@dataclass(frozen=True)
class AggregateResult:
    """All attacks on the release candidate and the strongest one.

    ``rmia_offline_a`` is the offline RMIA ``a`` used (None without RMIA) and
    ``rmia_offline_a_source`` how it was chosen ("tuned", "given" or "fallback").
    """

    attacks: Mapping[Attack, AttackResult]
    members: int
    non_members: int
    rmia_offline_a: float | None = None
    rmia_offline_a_source: str | None = None

    @property
    def strongest(self) -> Attack:
        return max(self.attacks, key=lambda a: self.attacks[a].auc)

    @property
    def max_auc(self) -> float:
        return max(r.auc for r in self.attacks.values())

    def max_tpr_at(self, fpr: float) -> float:
        return max(r.tpr_at_fpr[fpr] for r in self.attacks.values())


def lira_online(
    target: FloatArray, mu_in: FloatArray, sd_in: FloatArray, mu_out: FloatArray, sd_out: FloatArray
) -> FloatArray:
    """Online LiRA: ``log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out)``."""
    log_in = np.asarray(stats.norm.logpdf(target, mu_in, sd_in), dtype=np.float64)
    return log_in - np.asarray(stats.norm.logpdf(target, mu_out, sd_out), dtype=np.float64)


def lira_offline(target: FloatArray, mu_out: FloatArray, sd_out: FloatArray) -> FloatArray:
    """Offline LiRA, one-sided: the standardised score ``(s - mu_out) / sd_out``.

    The paper's test statistic is the p-value ``1 - Phi(z)``; ``z`` ranks records the
    same way (reversed, so higher means member) without saturating at 1 for large z.
    """
    return (target - mu_out) / sd_out


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
        _, _, auc = _roc(_rmia_scores(target, prior, ~is_member, gamma), is_member)
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


def roc_curve(membership_score: FloatArray, is_member: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Empirical ROC (FPR, TPR), one point per distinct threshold, ties kept together."""
    order = np.argsort(-membership_score, kind="stable")
    ordered_scores = membership_score[order]
    ordered_labels = is_member[order]
    distinct = np.flatnonzero(np.diff(ordered_scores) != 0)
    ends = np.r_[distinct, len(ordered_scores) - 1]
    tp = np.cumsum(ordered_labels)[ends]
    fp = (ends + 1) - tp
    tpr = np.r_[0.0, tp / max(int(is_member.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~is_member).sum()), 1)]
    return fpr, tpr


def roc_auc(membership_score: FloatArray, is_member: BoolArray) -> float:
    """Mann-Whitney AUC with ties counted as one half."""
    ranks = stats.rankdata(membership_score)
    n_pos = int(is_member.sum())
    n_neg = len(is_member) - n_pos
    return float((ranks[is_member].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def tpr_at_fpr(fpr: FloatArray, tpr: FloatArray, level: float) -> float:
    """Largest TPR among thresholds whose FPR is at most ``level``."""
    return float(tpr[fpr <= level].max())


def _thin(fpr: FloatArray, tpr: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Keep at most ~_ROC_POINTS points, spaced on a log FPR axis, for plotting."""
    if len(fpr) <= _ROC_POINTS:
        return fpr, tpr
    grid = np.r_[0.0, np.geomspace(max(float(fpr[fpr > 0].min()), 1e-6), 1.0, _ROC_POINTS)]
    index = np.searchsorted(fpr, grid, side="right") - 1
    return fpr[index], tpr[index]


def _roc(score: FloatArray, is_member: BoolArray) -> tuple[FloatArray, FloatArray, float]:
    """`roc_curve` and `roc_auc` from one sort; the same numbers, bit for bit.

    Tied scores form one ROC point and share their average rank, so the order within a tie
    does not matter and the faster unstable sort is used. Non-finite scores take the
    definitions.
    """
    if not np.isfinite(score).all():  # (np.diff of equal infinities is NaN, not 0)
        fpr, tpr = roc_curve(score, is_member)
        return fpr, tpr, roc_auc(score, is_member)
    n = len(score)
    order = np.argsort(-score)
    ordered_scores = score[order]
    distinct = np.flatnonzero(np.diff(ordered_scores) != 0)
    ends = np.r_[distinct, n - 1]
    tp = np.cumsum(is_member[order])[ends]
    fp = (ends + 1) - tp
    n_pos = int(is_member.sum())
    tpr = np.r_[0.0, tp / max(n_pos, 1)]
    fpr = np.r_[0.0, fp / max(int((~is_member).sum()), 1)]
    # Ascending 1-based ranks, ties averaged (scipy.stats.rankdata): the tie group at
    # descending positions [start, end] has the ranks n - end .. n - start.
    starts = np.r_[0, ends[:-1] + 1]
    ranks = np.empty(n)
    ranks[order] = np.repeat(n - (starts + ends) / 2.0, ends - starts + 1)
    n_neg = n - n_pos
    auc = float((ranks[is_member].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return fpr, tpr, auc


def _result(score: FloatArray, is_member: BoolArray, fprs: tuple[float, ...]) -> AttackResult:
    fpr, tpr, auc = _roc(score, is_member)
    thin_fpr, thin_tpr = _thin(fpr, tpr)
    return AttackResult(
        auc=auc,
        tpr_at_fpr={level: tpr_at_fpr(fpr, tpr, level) for level in fprs},
        roc_fpr=thin_fpr,
        roc_tpr=thin_tpr,
    )


def run_attacks(
    target: FloatArray,
    is_member: BoolArray,
    moments: RecordMoments,
    reference_scores: NDArray[np.floating[Any]],
    reference_masks: BoolArray,
    *,
    fprs: tuple[float, ...],
    single_label: bool,
    gamma: float = 2.0,
    offline_a: float | None = None,
) -> AggregateResult:
    """Run every applicable attack on the release candidate.

    Args:
        target: ``(n_records,)`` scores under the release candidate.
        is_member: ``(n_records,)`` True for the candidate's training records.
        moments: reference-model moments per record.
        single_label: run RMIA (it assumes one true label per record).
        offline_a: RMIA's offline ``a``; None tunes it (`tune_rmia_offline_a`).
    """
    m = moments
    sd_in_fixed = np.full_like(m.sd_in, m.sd_in.mean())
    sd_out_fixed = np.full_like(m.sd_out, m.sd_out.mean())
    scorers: dict[Attack, Callable[[], FloatArray]] = {
        Attack.LIRA_ONLINE: lambda: lira_online(target, m.mu_in, m.sd_in, m.mu_out, m.sd_out),
        Attack.LIRA_ONLINE_FIXED_VARIANCE: lambda: lira_online(
            target, m.mu_in, sd_in_fixed, m.mu_out, sd_out_fixed
        ),
        Attack.LIRA_OFFLINE: lambda: lira_offline(target, m.mu_out, m.sd_out),
        Attack.LIRA_OFFLINE_FIXED_VARIANCE: lambda: lira_offline(target, m.mu_out, sd_out_fixed),
    }
    a_used, a_source = None, None
    if single_label:
        a_used, a_source = offline_a, "given"
        if a_used is None:
            a_used = tune_rmia_offline_a(reference_scores, reference_masks, gamma=gamma)
            a_source = "tuned"
        if a_used is None:
            a_used, a_source = RMIA_OFFLINE_A_FALLBACK, "fallback"
        # Both RMIA variants share one pass over the reference scores (see `rmia`).
        population = ~is_member
        prior_online, prior_offline = _rmia_priors(
            reference_scores, reference_masks, (None, a_used)
        )
        scorers[Attack.RMIA_ONLINE] = lambda: _rmia_scores(target, prior_online, population, gamma)
        scorers[Attack.RMIA_OFFLINE] = lambda: _rmia_scores(
            target, prior_offline, population, gamma
        )
    return AggregateResult(
        attacks={attack: _result(score(), is_member, fprs) for attack, score in scorers.items()},
        members=int(is_member.sum()),
        non_members=int((~is_member).sum()),
        rmia_offline_a=a_used,
        rmia_offline_a_source=a_source,
    )
