"""One-sided lower confidence bounds of AUCs: the evidence an adaptive audit needs before
it settles a fail early (`privacy_gate.rules`)."""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from privacy_gate.record_stats import hanley_mcneil_se

__all__ = ["auc_lower_bound", "patient_auc_lower_bound"]


def auc_lower_bound(auc: float, positives: int, negatives: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound of an AUC (normal approximation,
    `privacy_gate.record_stats.hanley_mcneil_se`)."""
    if positives < 1 or negatives < 1 or not math.isfinite(auc):
        return -math.inf
    z = float(special.ndtri(1.0 - alpha))
    se = hanley_mcneil_se(np.array([auc]), np.array([positives]), np.array([negatives]))
    return auc - z * float(se[0])


def patient_auc_lower_bound(auc: float, n_in: int, n_out: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound of a record AUC ``Phi(d)`` on the
    probit scale: ``d - z sqrt(var)``, with the delta-method variance of
    ``d = (mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2)`` under Gaussian scores of equal
    variance, ``(1/n_in + 1/n_out) (1/2 + d^2/8)`` (``1/h + d^2/(4h)`` at
    ``n_in = n_out = h``). Unlike the SE at the estimate it does not collapse near AUC 1.

    >>> round(patient_auc_lower_bound(0.9, 32, 32, 0.05), 3)
    0.825
    """
    if n_in < 2 or n_out < 2 or not math.isfinite(auc):
        return -math.inf
    d = float(special.ndtri(min(max(auc, 0.5), 1.0 - 1e-10)))
    variance = (1.0 / n_in + 1.0 / n_out) * (0.5 + d * d / 8.0)
    z = float(special.ndtri(1.0 - alpha))
    return float(special.ndtr(d - z * math.sqrt(variance)))
