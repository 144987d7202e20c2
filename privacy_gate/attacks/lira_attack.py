"""LiRA (Carlini et al. 2022) on the release candidate: online (IN and OUT Gaussians per
record) and offline (OUT only), each with per-record or pooled (fixed) variances."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from privacy_gate.attacks.registry import AttackInputs, AttackSpec

__all__ = ["SPECS", "lira_offline", "lira_online"]

FloatArray = NDArray[np.float64]


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


def _fixed_sd(inputs: AttackInputs) -> tuple[FloatArray, FloatArray]:
    """The IN and OUT standard deviations pooled over records (the fixed-variance LiRA)."""
    m = inputs.moments
    return inputs.shared(  # type: ignore[no-any-return]
        "lira_fixed_sd",
        lambda: (np.full_like(m.sd_in, m.sd_in.mean()), np.full_like(m.sd_out, m.sd_out.mean())),
    )


def _online(inputs: AttackInputs) -> FloatArray:
    m = inputs.moments
    return lira_online(inputs.target, m.mu_in, m.sd_in, m.mu_out, m.sd_out)


def _online_fixed(inputs: AttackInputs) -> FloatArray:
    sd_in, sd_out = _fixed_sd(inputs)
    return lira_online(inputs.target, inputs.moments.mu_in, sd_in, inputs.moments.mu_out, sd_out)


def _offline(inputs: AttackInputs) -> FloatArray:
    return lira_offline(inputs.target, inputs.moments.mu_out, inputs.moments.sd_out)


def _offline_fixed(inputs: AttackInputs) -> FloatArray:
    return lira_offline(inputs.target, inputs.moments.mu_out, _fixed_sd(inputs)[1])


SPECS = (
    AttackSpec("lira_online", _online),
    AttackSpec("lira_online_fixed_variance", _online_fixed),
    AttackSpec("lira_offline", _offline),
    AttackSpec("lira_offline_fixed_variance", _offline_fixed),
)
"""LiRA's four variants, in the report's order."""
