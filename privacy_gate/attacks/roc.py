"""ROC summaries of a membership score over members and non-members: the curve, the AUC
(Mann-Whitney, ties one half), the TPR at a low FPR and a thinned curve for plots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = ["AttackResult", "attack_result", "roc_and_auc", "roc_auc", "roc_curve", "tpr_at_fpr"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
_ROC_POINTS = 200


@dataclass(frozen=True)
class AttackResult:
    """ROC summary of one attack: AUC, TPR at each FPR and a thinned ROC curve."""

    auc: float
    tpr_at_fpr: Mapping[float, float]
    roc_fpr: FloatArray
    roc_tpr: FloatArray


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


def roc_and_auc(score: FloatArray, is_member: BoolArray) -> tuple[FloatArray, FloatArray, float]:
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


def attack_result(score: FloatArray, is_member: BoolArray, fprs: tuple[float, ...]) -> AttackResult:
    fpr, tpr, auc = roc_and_auc(score, is_member)
    thin_fpr, thin_tpr = _thin(fpr, tpr)
    return AttackResult(
        auc=auc,
        tpr_at_fpr={level: tpr_at_fpr(fpr, tpr, level) for level in fprs},
        roc_fpr=thin_fpr,
        roc_tpr=thin_tpr,
    )
