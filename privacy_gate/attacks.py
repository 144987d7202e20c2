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

from privacy_gate.record_stats import RecordMoments

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
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
_ROC_POINTS = 200


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
    """All attacks on the release candidate and the strongest one."""

    attacks: Mapping[Attack, AttackResult]
    members: int
    non_members: int

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

    ``LR(x) = p_target(x) / Pr(x)`` with ``Pr(x)`` the mean of the reference models'
    ``p`` (online: all models; offline: ``((1 + a) * mean_out + (1 - a)) / 2``). The
    membership score is the share of population records ``z`` (``population``, x itself
    excluded) with ``LR(x) / LR(z) >= gamma``.

    Args:
        target: ``(n_records,)`` scores under the release candidate.
        reference_scores: ``(n_reference_models, n_records)``.
        reference_masks: ``(n_reference_models, n_records)``.
        population: ``(n_records,)`` records usable as the population z.
    """
    p_target = special.expit(target)
    p_reference = special.expit(np.asarray(reference_scores, dtype=np.float64))
    if offline_a is None:
        prior = p_reference.mean(axis=0)
    else:
        out = ~reference_masks
        mean_out = np.where(out, p_reference, 0.0).sum(axis=0) / out.sum(axis=0)
        prior = ((1.0 + offline_a) * mean_out + (1.0 - offline_a)) / 2.0
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


def _result(score: FloatArray, is_member: BoolArray, fprs: tuple[float, ...]) -> AttackResult:
    fpr, tpr = roc_curve(score, is_member)
    thin_fpr, thin_tpr = _thin(fpr, tpr)
    return AttackResult(
        auc=roc_auc(score, is_member),
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
    offline_a: float = 0.3,
) -> AggregateResult:
    """Run every applicable attack on the release candidate.

    Args:
        target: ``(n_records,)`` scores under the release candidate.
        is_member: ``(n_records,)`` True for the candidate's training records.
        moments: reference-model moments per record.
        single_label: run RMIA (it assumes one true label per record).
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
    if single_label:
        population = ~is_member
        scorers[Attack.RMIA_ONLINE] = lambda: rmia(
            target, reference_scores, reference_masks, population, gamma=gamma, offline_a=None
        )
        scorers[Attack.RMIA_OFFLINE] = lambda: rmia(
            target, reference_scores, reference_masks, population, gamma=gamma, offline_a=offline_a
        )
    return AggregateResult(
        attacks={attack: _result(score(), is_member, fprs) for attack, score in scorers.items()},
        members=int(is_member.sum()),
        non_members=int((~is_member).sum()),
    )
