"""The DP-SGD retraining recommendation: settings computed from the gate's own limit.

From the policy's patient-AUC limit T, the per-record target is ``mu* = sqrt(2) Phi^-1(T)``
divided by the largest number of records per patient (group privacy, docs/statistics.md
"Recommendation"). For the pipeline's own dataset size, batch size and epochs, the
smallest noise multiplier whose PRV AUC ceiling and mu-GDP cross-check both stay within
the target is found by bisection; epsilon is reported at delta = 1/N. The result is the
``report["dp_recommendation"]`` section read by :mod:`privacy_gate.render.recommendation`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from privacy_gate.adaptive import DEFAULT_MAX_REFERENCE_MODELS
from privacy_gate.config import AuditConfig
from privacy_gate.dp import accounting
from privacy_gate.dp_ceiling import (
    auc_for_mu,
    gdp_auc_ceiling,
    group_auc,
    target_mu,
)
from privacy_gate.errors import InputError
from privacy_gate.gate import reference_models_for_policy
from privacy_gate.report_model import AuditReport, DPRecommendation, RecommendationStatus
from privacy_gate.rules import lowest_patient_auc_limit

__all__ = [
    "dp_schedule",
    "gdp_noise",
    "noise_for_target",
    "reaudit_reference_models",
    "recommend_dp_sgd",
    "recommend_for_report",
    "unavailable",
]

_LOG = logging.getLogger("privacy_gate.dp")
RELATIVE_TOLERANCE = 0.005
"""Bisection stops when the noise multiplier is known to 0.5%; the upper end is returned."""
MAX_NOISE_MULTIPLIER = 1e3


def unavailable(reason: str) -> DPRecommendation:
    """A ``dp_recommendation`` section that says why no settings were computed."""
    return DPRecommendation(status=RecommendationStatus.UNAVAILABLE, reason=reason)


def dp_schedule(dataset_size: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Sample rate and number of steps of Opacus' Poisson sampling for this recipe.

    Opacus' ``DPDataLoader`` samples each record with rate ``q = 1 / ceil(N / batch_size)``
    (one over the original loader's batches) and runs ``int(1 / q)`` steps an epoch: the
    loader's batches, or one fewer where the float reciprocal rounds down (e.g. 93
    batches give 92 steps). ``make_private`` then accounts with ``1 / steps`` (and so
    does this): the sampling rate itself, except where the steps round down, where it is
    slightly larger (conservative). The steps are those that run.

    >>> dp_schedule(4552, 128, 20)
    (0.027777777777777776, 720)
    """
    for name, value in (
        ("dataset_size", dataset_size),
        ("batch_size", batch_size),
        ("epochs", epochs),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(
                f"The '{name}' of a DP-SGD recommendation must be an integer >= 1. "
                f"Got {value!r} instead."
            )
    steps = int(1 / (1.0 / math.ceil(dataset_size / batch_size)))
    return 1 / steps, epochs * steps


def gdp_noise(target_record_mu: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier whose mu-GDP equals ``target_record_mu`` (closed form).

    >>> round(gdp_noise(1.3108, 0.01, 10_000), 3)
    1.0
    """
    ratio = target_record_mu / (sample_rate * math.sqrt(steps))
    return 1.0 / math.sqrt(math.log1p(ratio * ratio))


def noise_for_target(
    target_record_auc: float,
    target_record_mu: float,
    sample_rate: float,
    steps: int,
    *,
    ceiling: Callable[[float, float, int], float] = accounting.auc_ceiling,
) -> float:
    """Smallest noise multiplier (to 0.5%) whose PRV ceiling is <= ``target_record_auc``
    and whose mu-GDP is <= ``target_record_mu``; both fall as the noise grows.

    The mu-GDP condition has a closed form, so the search starts there: usually one PRV
    composition settles it.
    """
    low = gdp_noise(target_record_mu, sample_rate, steps)
    if ceiling(low, sample_rate, steps) <= target_record_auc:
        return low
    high = 2.0 * low
    while ceiling(high, sample_rate, steps) > target_record_auc:
        low, high = high, 2.0 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise InputError(
                f"No noise multiplier up to {MAX_NOISE_MULTIPLIER:g} keeps the record AUC at "
                f"{target_record_auc:.4f}. HINT: raise the policy's patient-AUC limit or train "
                "on more records per batch."
            )
    while high - low > RELATIVE_TOLERANCE * high:
        middle = 0.5 * (low + high)
        if ceiling(middle, sample_rate, steps) <= target_record_auc:
            high = middle
        else:
            low = middle
    return high


def recommend_dp_sgd(
    *,
    auc_limit: float,
    auc_limit_source: str,
    max_records_per_patient: int,
    dataset_size: int,
    batch_size: int,
    epochs: int,
    max_grad_norm: float,
    max_grad_norm_source: str,
    reason: str,
    reference_models: int | None = None,
) -> DPRecommendation:
    """The recommendation section for a pipeline that trains on ``dataset_size`` records.

    Args:
        auc_limit: the gate's patient-AUC limit T
            (`privacy_gate.rules.lowest_patient_auc_limit`).
        max_records_per_patient: the most records one training patient has.
        max_grad_norm: the suggested per-sample clipping norm.
        max_grad_norm_source: how that norm was chosen (one sentence).
        reason: why the recommendation is given (e.g. the gate's verdict).
        reference_models: K for the re-audit (a private model's records sit near AUC 0.5,
            where each record's AUC is least precise), None to leave K as it is.
    """
    if not 0.5 < auc_limit < 1.0:
        raise InputError(
            f"The patient-AUC limit of a DP-SGD recommendation must lie in (0.5, 1). "
            f"Got {auc_limit!r} instead."
        )
    sample_rate, steps = dp_schedule(dataset_size, batch_size, epochs)
    mu = target_mu(auc_limit, max_records_per_patient)
    record_auc = auc_for_mu(mu)
    _LOG.info("Searching the DP-SGD noise multiplier for a record AUC ceiling of %.4f", record_auc)
    sigma = round_up(noise_for_target(record_auc, mu, sample_rate, steps))
    ceiling = accounting.auc_ceiling(sigma, sample_rate, steps)
    delta = 1.0 / dataset_size
    eps = accounting.epsilon(sigma, sample_rate, steps, delta=delta)
    clip = float(f"{max_grad_norm:.3g}")
    return DPRecommendation(
        status=RecommendationStatus.RECOMMENDED,
        reason=reason,
        auc_limit=auc_limit,
        auc_limit_source=auc_limit_source,
        max_records_per_patient=max_records_per_patient,
        target_mu=mu,
        target_record_auc=record_auc,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        max_grad_norm_source=max_grad_norm_source,
        epsilon=eps,
        delta=delta,
        sample_rate=sample_rate,
        batch_size=batch_size,
        dataset_size=dataset_size,
        epochs=epochs,
        steps=steps,
        accountant="prv",
        auc_ceiling=ceiling,
        auc_ceiling_gdp=gdp_auc_ceiling(sigma, sample_rate, steps),
        patient_auc_ceiling=group_auc(ceiling, max_records_per_patient),
        reference_models=reference_models,
        apply=apply_snippets(sigma, clip, reference_models),
    )


def reaudit_reference_models(report: AuditReport, config: AuditConfig) -> int:
    """The K the policy's power rules need for this pool (noise floor below the lowest
    patient-level limit, detectable AUC within ``max_detectable_auc``,
    ``min_reference_models``): the least K at which the adaptive re-audit can pass. The
    report's K when the policy has no power rule or none up to 4096 suffices."""
    audit = report.audit
    needed = reference_models_for_policy(config, audit.records, audit.patients)
    return needed or audit.reference_models


def recommend_for_report(
    report: AuditReport,
    config: AuditConfig,
    *,
    dataset_size: int,
    batch_size: int,
    epochs: int,
    max_records_per_patient: int,
    max_grad_norm: float | None = None,
) -> DPRecommendation:
    """The recommendation for an existing report (e.g. from ``privacy-gate score``, which
    knows nothing of the training recipe): the pipeline's schedule comes from the caller."""
    limit = lowest_patient_auc_limit(config.policy())
    if limit is None:
        return unavailable("the policy has no patient-AUC rule to derive a target from")
    verdict = report.decision.status.value
    return recommend_dp_sgd(
        auc_limit=limit[0],
        auc_limit_source=limit[1],
        max_records_per_patient=max_records_per_patient,
        dataset_size=dataset_size,
        batch_size=batch_size,
        epochs=epochs,
        max_grad_norm=1.0 if max_grad_norm is None else max_grad_norm,
        max_grad_norm_source=(
            "given" if max_grad_norm is not None else "default 1.0 (no model to measure: tune it)"
        ),
        reason=f"the report's verdict is {verdict}",
        reference_models=reaudit_reference_models(report, config),
    )


def round_up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits (more noise is never less private).

    >>> round_up(0.720612)
    0.7207
    """
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale - 1e-9) / scale


def apply_snippets(
    noise_multiplier: float, max_grad_norm: float, reference_models: int | None = None
) -> dict[str, str]:
    """The code or config change that applies the settings, per integration. The re-audit
    is adaptive (``reference_models: auto``): it trains rounds of models until the verdict
    is settled, at least the ``reference_models`` the policy's power rules need."""
    need = "" if reference_models is None else f"  # the power rules need K >= {reference_models}"
    k_yaml = f"\nreference_models: auto{need}"
    if reference_models is not None and reference_models > DEFAULT_MAX_REFERENCE_MODELS:
        k_yaml += f"\nmax_reference_models: {reference_models + reference_models % 2}"
    k_callback = 'reference_models="auto"'
    return {
        "audit_yaml": (
            "recipe:\n"
            f"  dp: {{noise_multiplier: {noise_multiplier}, max_grad_norm: {max_grad_norm}}}"
            + k_yaml
        ),
        "lightning": (
            "from lightning_callbacks import DPSGD, PrivacyAuditCallback\n"
            f"dp = DPSGD(noise_multiplier={noise_multiplier}, max_grad_norm={max_grad_norm})\n"
            f"trainer = Trainer(..., callbacks=[dp, PrivacyAuditCallback({k_callback})])" + need
        ),
        "opacus": (
            "model, optimizer, loader = PrivacyEngine(accountant='prv').make_private(\n"
            "    module=model, optimizer=optimizer, data_loader=loader,\n"
            f"    noise_multiplier={noise_multiplier}, max_grad_norm={max_grad_norm},\n"
            "    poisson_sampling=True)"
        ),
    }
