"""The audit of a finished Lightning fit, independent of the Lightning namespace.

``fit`` trained the release candidate; here the audit pool, the recipe and a reference
model trainer are read from the Trainer and the module, `run_audit` trains the reference
models (batched when the recipe allows, else one Lightning Trainer per model), and the
gate's decision becomes an `Outcome`: figures for ``trainer.callback_metrics``, a summary
line and what to do about it (`decide_action`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_callbacks._averaging import describe, fresh_copies
from lightning_callbacks._averaging import reason as averaging_reason
from lightning_callbacks._data import build_audit_data, train_loader
from lightning_callbacks._dp import find_dpsgd
from lightning_callbacks._recipe import TrainerSettings, extract_recipe, module_factory
from lightning_callbacks._reference import make_train_fn
from lightning_callbacks._settings import OWNER, AuditSettings
from privacy_gate.errors import ConfigError, PrivacyGateFailed
from privacy_gate.metric_keys import join_key
from privacy_gate.metrics import trainer_metrics
from privacy_gate.pipeline import AuditResult
from privacy_gate.report import REPORT_FILE
from privacy_gate.report_model import AuditReport
from privacy_gate.training.audit import run_audit
from privacy_gate.training.backends import BACKENDS, backend_spec, make_backend
from privacy_gate.training.callback_args import Action, decide_action
from privacy_gate.training.data import AuditData
from privacy_gate.training.inputs import check_model_outputs
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.reference import TrainingBackend
from privacy_gate.training.shares import RankShare, store_shares

__all__ = [
    "Action",
    "FitInputs",
    "Outcome",
    "PrivacyGateFailed",
    "check_fit",
    "decide_action",
    "fit_inputs",
    "prepare_fit",
    "run_fit_audit",
]

_LOG = logging.getLogger("lightning_callbacks")


@dataclass(frozen=True)
class Outcome:
    """What rank zero found, in a form that broadcasts (plain, picklable values)."""

    status: str
    metrics: dict[str, float]
    summary: str
    violations: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    report: str | None = None
    report_sha256: str | None = None
    warnings: tuple[str, ...] = field(default=())
    mlflow_run: str | None = None

    def failure(self) -> PrivacyGateFailed:
        """The exception of ``on_fail="raise"``: one line per violated rule, then where the
        report is and what to do."""
        rules = [
            f"  - {rule}: {message}"
            for rule, message in zip(self.violations, self.messages, strict=True)
        ] or ["  (not stored in this checkpoint; see the report)"]
        return PrivacyGateFailed(
            "\n".join(
                [
                    f"The model failed the privacy gate ({self.status}). Violated rules:",
                    *rules,
                    f"Report: {self.report}",
                    "HINT: retrain with DP-SGD at the settings of the report's DP-SGD "
                    "recommendation (add lightning_callbacks.DPSGD with them to the Trainer), "
                    "or pass on_fail='warn' to keep the pipeline running while you "
                    "investigate.",
                ]
            ),
            status=self.status,
            violations=self.violations,
            report=self.report,
        )


def check_fit(trainer: Any, module: Any, settings: AuditSettings) -> None:
    """Checks that need the Trainer, run before training starts (a multi-process fit's:
    `_distributed.check_distributed`)."""
    factory = module_factory(module, settings.model_factory)
    spec = backend_spec(settings.backend, OWNER, ConfigError)  # fail before training
    spec.check_factory(factory, f"{OWNER}'s model factory ({type(module).__name__})")


def prepare_fit(trainer: Any, module: Any, settings: AuditSettings) -> AuditData:
    """The audit pool of this fit, checked before the first training step: labels against
    the task, finite inputs, metadata aligned with the pool, the module's outputs against
    the labels (`privacy_gate.training.inputs`). A long fit is never lost to bad input."""
    data = build_audit_data(trainer, settings)
    inputs, labels = data.pool()
    check_model_outputs(module, inputs, labels, data.task, f"The module ({type(module).__name__})")
    return data


def _summary(result: AuditResult, metrics: dict[str, float], report: Path) -> str:
    figures = [
        f"worst patient AUC {metrics[join_key('patient_auc', 'max')]:.3f}",
        f"patients at risk {int(metrics[join_key('patients_at_risk')])}",
        f"noise floor {metrics[join_key('noise_floor', 'max_patient_auc_q95')]:.3f}",
    ]
    if join_key("aggregate", "auc") in metrics:
        figures.append(f"aggregate attack AUC {metrics[join_key('aggregate', 'auc')]:.3f}")
    return f"{result.decision.one_line()}: {', '.join(figures)}. Report: {report}"


@dataclass(frozen=True)
class FitInputs:
    """What every process of a fit audit reads from the Trainer and the module: the
    pool, the factory and recipe, the backend and its Trainer fallback, the device."""

    out: Path
    data: AuditData
    factory: Any
    recipe: Recipe
    backend: TrainingBackend
    train_fn: Any
    reason: str | None
    cache_key: dict[str, Any]
    device: str


def fit_inputs(
    trainer: Any,
    module: Any,
    settings: AuditSettings,
    trainer_class: Any,
    data: AuditData | None,
    averaging: list[Any] | None = None,
) -> FitInputs:
    """The audit's inputs from this fit (the pool `prepare_fit` built, or built now).

    Under multi-process training the candidate's batch is the loader's times the world
    size (each rank steps on its own batch, the gradients averaged), and the reference
    models train with privacy-gate's own loops: a Lightning Trainer per model inside a
    rank would start a distributed job of its own.
    """
    out = settings.output_dir or Path(trainer.default_root_dir) / "privacy_audit"
    data = build_audit_data(trainer, settings) if data is None else data
    factory = module_factory(module, settings.model_factory)
    trainer_settings = TrainerSettings.of(trainer)
    loader = train_loader(trainer)
    dp = find_dpsgd(trainer)
    world = int(trainer.world_size)
    recipe, reason = extract_recipe(
        trainer_settings,
        loader,
        factory(),
        settings.task,
        batch_size=None if dp is None else dp.batch_size_,
        world_size=world,
    )
    averaging = averaging or []  # `_averaging.templates`: as before the fit
    if averaging:
        reason = "; ".join(r for r in (reason, averaging_reason(averaging)) if r)
    if dp is not None:  # reference models train with the same DP-SGD recipe
        recipe = dataclasses.replace(recipe, dp=dp.settings)
    plan = backend_spec(settings.backend, OWNER, ConfigError).fit_plan(reason, OWNER)
    if plan.note is not None and world == 1:
        _LOG.info("%s", plan.note)
    if world > 1 and plan.train_fn and reason is not None:
        raise ConfigError(
            f"{OWNER} under multi-process training trains the reference models with "
            f"privacy-gate's own loops, but this fit needs a Lightning Trainer per model: "
            f"{reason}. HINT: audit after fit() in one process (privacy_gate.training."
            "run_audit, or a single-device Trainer with this callback)."
        )
    options = {  # an 'auto' fit that trains one model at a time keeps what applies
        name: value
        for name, value in settings.backend_options.items()
        if name in BACKENDS[plan.backend].options
    }
    train_fn = make_train_fn(
        trainer_class,
        trainer_settings,
        factory,
        data.pool(),
        batch_size=recipe.batch_size,
        root_dir=out,
        callbacks=_recipe_callbacks(dp, averaging),
    ) if plan.train_fn and world == 1 else None  # fmt: skip
    cache_key: dict[str, Any] = {"trainer": dataclasses.asdict(trainer_settings)}
    if averaging:  # other reference models: other stored scores
        cache_key["weight_averaging"] = [describe(c) for c in averaging]
    return FitInputs(
        out=out,
        data=data,
        factory=factory,
        recipe=recipe,
        backend=make_backend(plan.backend, **options),
        train_fn=train_fn,
        reason=reason,
        cache_key=cache_key,
        device=_recipe_device(trainer),
    )


def _recipe_callbacks(dp: Any, averaging: list[Any]) -> Any:
    """The callbacks that are part of the recipe, fresh for each reference model's
    Trainer (None: none)."""
    if dp is None and not averaging:
        return None

    def callbacks(seed: int) -> list[Any]:
        return [*([] if dp is None else [dp.reference_copy(seed)]), *fresh_copies(averaging)]

    return callbacks


def run_fit_audit(
    trainer: Any,
    module: Any,
    settings: AuditSettings,
    trainer_class: Any,
    data: AuditData | None = None,
    shares: list[RankShare] | None = None,
    averaging: list[Any] | None = None,
) -> Outcome:
    """Audit the module ``fit`` just trained (its final weights), on the pool `prepare_fit`
    built before training (built now when None). Rank zero only; under multi-process
    training ``shares`` holds the scores each rank trained (`_distributed`)."""
    inputs = fit_inputs(trainer, module, settings, trainer_class, data, averaging)
    data, out = inputs.data, inputs.out
    common: dict[str, Any] = {
        "recipe": inputs.recipe,
        "reference_models": settings.reference_models,
        "backend": inputs.backend,
        "seed": settings.seed,
        "candidate": module,
        "out_dir": out,
        "train_fn": inputs.train_fn,
        "cache_key": inputs.cache_key,
        "device": inputs.device,
    }
    provenance: dict[str, Any] = {
        "fallback_reason": inputs.reason,  # why the fast path was not taken
        "trainer": {"class": f"{trainer_class.__module__}.{trainer_class.__qualname__}"},
    }
    if averaging:
        provenance["weight_averaging"] = [describe(c) for c in averaging]
    if shares is not None:  # every model is in the store once these are saved
        account = store_shares(inputs.factory, data, shares, **common)
        provenance["distributed"] = {
            "world_size": len(shares),
            **account,
            "strategy": type(trainer.strategy).__name__,
        }
    _LOG.info(
        "Auditing %s: %s reference models on %d records (backend %s); report in %s.",
        type(module).__name__, settings.reference_models, data.n_records,
        inputs.backend.name, out,
    )  # fmt: skip
    result = run_audit(
        inputs.factory,
        data,
        config=settings.config,
        plots=settings.plots,
        provenance=provenance,
        **common,
    )
    metrics = trainer_metrics(result.report)
    decision = result.decision
    example = data.pool()[0][:1].detach().cpu().numpy()
    mlflow_run = _log_to_mlflow(
        trainer, result.report, out, module if settings.log_model else None, example
    )
    return Outcome(
        status=decision.status.value,
        metrics=metrics,
        summary=_summary(result, metrics, out / REPORT_FILE),
        violations=tuple(v.rule for v in decision.violations),
        messages=tuple(v.message for v in decision.violations),
        report=str(out / REPORT_FILE),
        report_sha256=hashlib.sha256((out / REPORT_FILE).read_bytes()).hexdigest(),
        warnings=decision.warnings,
        mlflow_run=mlflow_run,
    )


def _mlflow_logger(trainer: Any) -> Any:
    """The Trainer's MLFlowLogger (either namespace), or None."""
    for logger in getattr(trainer, "loggers", None) or []:
        if type(logger).__name__ == "MLFlowLogger" and hasattr(logger, "run_id"):
            return logger
    return None


def _log_to_mlflow(
    trainer: Any, report: AuditReport, out: Path, module: Any, example: Any
) -> str | None:
    """Log the audit into the Trainer's MLflow run (signed when the environment holds the
    signing key) and, unless ``module`` is None, the audited module itself, bound to the
    audit by its files (`log_audited_model`); the run's id, or None without an
    MLFlowLogger."""
    logger = _mlflow_logger(trainer)
    if logger is None:
        return None
    from privacy_gate.mlflow.audited_model import log_audited_model
    from privacy_gate.mlflow.logging import log_report
    from privacy_gate.signing import signing_key_from_environment

    log_report(
        report,
        run_id=logger.run_id,
        client=logger.experiment,
        out_dir=out,
        model_sha256=report.audit.model_sha256,
    )
    _LOG.info("privacy-gate: the audit is logged into MLflow run %s.", logger.run_id)
    if module is not None:
        signed = signing_key_from_environment() is not None
        was_training = module.training
        module.eval()  # the export fixes the forward: inference behaviour, as audited
        try:
            logged = log_audited_model(
                module,
                input_example=example,
                run_id=logger.run_id,
                client=logger.experiment,
                expected_weights_sha256=None if signed else report.audit.model_sha256,
            )
        except Exception as exc:  # the audit is logged; only the model's release is lost
            warnings.warn(
                f"{OWNER} logged the audit into MLflow run {logger.run_id}, but not the audited "
                f"{type(module).__name__} ({type(exc).__name__}: {_first_line(exc)}), so no "
                "version of this run can be promoted through the gated registry. HINT: make "
                "forward exportable by torch.export (no data-dependent control flow), log the "
                "module with privacy_gate.mlflow.log_audited_model yourself, or pass "
                "log_model=False.",
                UserWarning,
                stacklevel=2,
            )
            return str(logger.run_id)
        finally:
            module.train(was_training)
        _LOG.info(
            "privacy-gate: the audited %s is logged into the run as %s%s.",
            type(module).__name__,
            logged.model_uri,
            ", its files bound to the signed audit" if signed else " (unsigned audit)",
        )
    return str(logger.run_id)


def _recipe_device(trainer: Any) -> str:
    """The Trainer's device for the recipe's loops and batched ensembles (CPU or CUDA;
    other accelerators train reference models with Lightning itself or on the CPU)."""
    device = trainer.strategy.root_device
    return str(device) if device.type in ("cpu", "cuda") else "cpu"


def _first_line(exc: BaseException) -> str:
    """An exception's first line, for a one-paragraph warning (torch's run to pages)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
