"""The report's DP sections: the retraining recommendation and, for a DP-trained model,
what its DP-SGD recipe guarantees and whether the audit agrees.

``dp_recommendation`` is computed when the gate refuses the model (a passing audit needs
no remedy, and the noise search costs a few PRV compositions); ``dp_training`` whenever
the recipe trains with DP-SGD: the record and patient AUC ceilings of the recipe and the
records whose measured AUC lower confidence bound exceeds the ceiling (there should be
none: one would mean broken accounting or a broken training loop).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from privacy_gate.config import AuditConfig
from privacy_gate.dp_ceiling import (
    gdp_auc_ceiling,
    group_auc,
    records_above_ceiling,
)
from privacy_gate.errors import InputError
from privacy_gate.gate import Status
from privacy_gate.pipeline import AuditResult
from privacy_gate.report_model import DPRecommendation, DPTraining, RecommendationStatus
from privacy_gate.rules import lowest_patient_auc_limit
from privacy_gate.training.data import AuditData
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.steps import compute_loss

__all__ = ["dp_recommendation", "dp_training", "max_records_per_patient"]

_LOG = logging.getLogger("privacy_gate.training")


def max_records_per_patient(result: AuditResult, members: np.ndarray[Any, Any]) -> int:
    """The most records any training patient has (group privacy needs the largest)."""
    counts = np.bincount(result.patient_index[members])
    return int(counts.max()) if counts.size else 1


def dp_recommendation(
    result: AuditResult,
    data: AuditData,
    recipe: Recipe,
    config: AuditConfig,
    initial_model: Callable[[], nn.Module],
) -> DPRecommendation:
    """The report's ``dp_recommendation`` for a model trained with ``recipe`` on ``data``'s
    members; ``initial_model()`` builds the untrained model that sets the clipping
    suggestion (only when one is needed: a passing audit builds none)."""
    return _recommendation(result, data, recipe, config, initial_model)


def _recommendation(
    result: AuditResult,
    data: AuditData,
    recipe: Recipe,
    config: AuditConfig,
    initial_model: Callable[[], nn.Module],
) -> DPRecommendation:
    from privacy_gate.dp.recommend import reaudit_reference_models, recommend_dp_sgd, unavailable

    if result.decision.status is Status.PASS:
        return DPRecommendation(status=RecommendationStatus.NOT_NEEDED, reason="the gate passed")
    limit = lowest_patient_auc_limit(config.policy())
    if limit is None:
        return unavailable("the policy has no patient-AUC rule to derive a target from")
    members = data.is_member()
    if recipe.dp is not None:
        clip = recipe.dp.max_grad_norm
        clip_source = "the recipe's current DP-SGD max_grad_norm"
    else:
        from privacy_gate.dp.clipping import median_grad_norm

        inputs, labels = data.pool()
        clip = median_grad_norm(
            initial_model(),
            inputs,
            labels,
            np.flatnonzero(members).astype(np.intp),
            lambda logits, target: compute_loss(logits, target, recipe.loss),
        )
        clip_source = "median per-sample gradient norm of the initialised model"
    try:
        return recommend_dp_sgd(
            auc_limit=limit[0],
            auc_limit_source=limit[1],
            max_records_per_patient=max_records_per_patient(result, members),
            dataset_size=int(members.sum()),
            batch_size=recipe.batch_size,
            epochs=recipe.epochs,
            max_grad_norm=clip,
            max_grad_norm_source=clip_source,
            reason=f"the gate's verdict is {result.decision.status.value}",
            reference_models=reaudit_reference_models(result.report, config),
        )
    except InputError as exc:  # e.g. Opacus missing: the audit stands, the remedy says why
        _LOG.warning("No DP-SGD recommendation: %s", exc)
        return unavailable(str(exc))


def dp_training(result: AuditResult, data: AuditData, recipe: Recipe) -> DPTraining | None:
    """The report's ``dp_training``: the DP guarantee of the audited recipe, checked
    against the measured record AUCs. None without DP."""
    if recipe.dp is None:
        return None
    from privacy_gate.dp import accounting
    from privacy_gate.dp.recommend import dp_schedule

    members = data.is_member()
    n_train = int(members.sum())
    sample_rate, steps = dp_schedule(n_train, recipe.batch_size, recipe.epochs)
    sigma = recipe.dp.noise_multiplier
    ceiling = accounting.auc_ceiling(sigma, sample_rate, steps)
    k = max_records_per_patient(result, members)
    moments = result.records.moments
    above = records_above_ceiling(result.records.auc, moments.n_in, moments.n_out, ceiling)
    if above.size:
        _LOG.warning(
            "%d record(s) are confidently above the DP ceiling %.4f (simultaneous 95%% bounds)",
            above.size,
            ceiling,
        )
    delta = 1.0 / n_train
    epsilon = accounting.epsilon(sigma, sample_rate, steps, delta=delta)
    return DPTraining(
        noise_multiplier=sigma,
        max_grad_norm=recipe.dp.max_grad_norm,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        epsilon=epsilon if math.isfinite(epsilon) else None,
        accountant="prv",
        auc_ceiling=ceiling,
        auc_ceiling_gdp=gdp_auc_ceiling(sigma, sample_rate, steps),
        max_records_per_patient=k,
        patient_auc_ceiling=group_auc(ceiling, k),
        records_checked=int(result.records.auc.size),
        records_above_ceiling=int(above.size),
        ceiling_test=(
            "(record AUC - ceiling) / Hanley-McNeil SE at the ceiling > Phi^-1(1 - 0.05 / "
            "records): one-sided, Bonferroni over records"
        ),
    )
