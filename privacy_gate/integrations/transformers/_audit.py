"""The audit of a finished Hugging Face fit: reference models (privacy-gate's loops when
the recipe is exact, else a Trainer per model), the report in ``output_dir``, the
MLflow run, and the verdict as an `Outcome`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from privacy_gate.errors import ConfigError, PrivacyGateFailed
from privacy_gate.integrations.transformers._data import LogitsModel
from privacy_gate.integrations.transformers._prepare import PreparedFit
from privacy_gate.integrations.transformers._reference import make_train_fn
from privacy_gate.integrations.transformers._settings import OWNER, HFAuditSettings
from privacy_gate.pipeline import AuditResult
from privacy_gate.report import REPORT_FILE
from privacy_gate.training.audit import run_audit
from privacy_gate.training.backends import BACKENDS, backend_spec, make_backend
from privacy_gate.training.backends.local import SEQUENTIAL

__all__ = ["Outcome", "run_fit_audit"]

_LOG = logging.getLogger("privacy_gate.integrations")

RECIPE_PATH, TRAINER_PATH = "recipe", "trainer"


@dataclass(frozen=True)
class Outcome:
    """What the audit found: the result, where the report is, the MLflow run it went to."""

    result: AuditResult
    report: Path
    mlflow_run: str | None
    path: str
    """``recipe`` (privacy-gate's loops) or ``trainer`` (a Trainer per reference model)."""

    @property
    def status(self) -> str:
        return self.result.decision.status.value

    def summary(self) -> str:
        return f"{self.result.decision.one_line()}. Report: {self.report}"

    def failure(self) -> PrivacyGateFailed:
        """The exception of ``on_fail="raise"``: one line per violated rule, the report,
        what to do."""
        decision = self.result.decision
        rules = [f"  - {v.rule}: {v.message}" for v in decision.violations] or ["  (none)"]
        return PrivacyGateFailed(
            "\n".join(
                [
                    f"The model failed the privacy gate ({self.status}). Violated rules:",
                    *rules,
                    f"Report: {self.report}",
                    "HINT: retrain with DP-SGD at the settings of the report's DP-SGD "
                    "recommendation, or pass on_fail='warn' to keep the pipeline running "
                    "while you investigate.",
                ]
            ),
            status=self.status,
            violations=tuple(v.rule for v in decision.violations),
            report=str(self.report),
        )


class _LogitsFactory:
    """The user's factory, its model wrapped to return logits; ``__wrapped__`` names the
    user's factory in the report (`model_identity`), not this adapter."""

    def __init__(self, factory: Callable[[], nn.Module], key: str) -> None:
        self.__wrapped__, self.key = factory, key

    def __call__(self) -> nn.Module:
        return LogitsModel(self.__wrapped__(), self.key)


def run_fit_audit(
    prepared: PreparedFit,
    model: nn.Module,
    settings: HFAuditSettings,
    stopped: tuple[int, int] | None = None,
) -> Outcome:
    """Audit ``model`` (the candidate's final weights) on the pool prepared before
    training; ``stopped``: the step training stopped at and the planned steps, when it
    stopped early (recorded in the report)."""
    trainer, data, key = prepared.trainer, prepared.data, prepared.input_key
    args = trainer.args
    out = settings.output_dir or Path(args.output_dir) / "privacy_audit"
    reason = "; ".join(prepared.problems) or None
    plan = backend_spec(settings.backend, OWNER, ConfigError).fit_plan(reason, OWNER)
    own_trainers = plan.train_fn and (reason is not None or plan.backend == SEQUENTIAL)
    train_fn = make_train_fn(trainer, prepared.factory, data.pool(), key) if own_trainers else None
    path = TRAINER_PATH if train_fn is not None else RECIPE_PATH
    if train_fn is not None:
        _LOG.info("Training reference models with a Hugging Face Trainer each: %s.", reason)
    options = {
        name: value
        for name, value in settings.backend_options.items()
        if name in BACKENDS[plan.backend].options
    }
    device = args.device if args.device.type in ("cpu", "cuda") else "cpu"
    provenance: dict[str, Any] = {
        "fallback_reason": reason,
        "trainer": {
            "class": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
            "reference_models_trained_by": path,
            "input_key": key,
        },
    }
    if stopped is not None:
        provenance["trainer"]["stopped_early"] = {"step": stopped[0], "max_steps": stopped[1]}
    _LOG.info(
        "Auditing %s: %s reference models on %d records; report in %s.",
        type(model).__name__, settings.reference_models, data.n_records, out,
    )  # fmt: skip
    result = run_audit(
        _LogitsFactory(prepared.factory, key),
        data,
        recipe=prepared.recipe,
        config=settings.config,
        reference_models=settings.reference_models,
        backend=make_backend(plan.backend, **options),
        seed=settings.seed,
        candidate=LogitsModel(model, key),
        out_dir=out,
        plots=settings.plots,
        train_fn=train_fn,
        cache_key={
            "transformers": {
                "trainer": provenance["trainer"]["class"],
                "path": path,
                "arguments": prepared.arguments,
            }
        },
        provenance=provenance,
        device=device,
    )
    return Outcome(
        result=result,
        report=out / REPORT_FILE,
        mlflow_run=_log_to_mlflow(prepared, result, out),
        path=path,
    )


def _log_to_mlflow(prepared: PreparedFit, result: AuditResult, out: Path) -> str | None:
    """Log the audit into the MLflow run that was active when training started (the
    Trainer's ``MLflowCallback`` run, which it may have ended by now, or the caller's own
    run); the run's id, or None without one."""
    from privacy_gate.mlflow.logging import active_run_location, client_for, log_report

    location = prepared.mlflow_run or active_run_location()
    if location is None:
        return None
    run_id, tracking_uri = location
    log_report(result.report, run_id=run_id, client=client_for(tracking_uri), out_dir=out)
    _LOG.info("privacy-gate: the audit is logged into MLflow run %s.", run_id)
    return run_id
