"""`PrivacyAuditCallback` for the Hugging Face ``Trainer``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback

from privacy_gate.adaptive import AdaptivePlan
from privacy_gate.errors import ConfigError
from privacy_gate.integrations.transformers._audit import Outcome, run_fit_audit
from privacy_gate.integrations.transformers._compat import calling_trainer
from privacy_gate.integrations.transformers._prepare import PreparedFit, prepare_fit
from privacy_gate.integrations.transformers._settings import (
    OWNER,
    HFAuditSettings,
    validate_settings,
)
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS
from privacy_gate.training.callback_args import Action, Metadata, decide_action

__all__ = ["PrivacyAuditCallback"]

_LOG = logging.getLogger("privacy_gate.integrations")


class PrivacyAuditCallback(TrainerCallback):
    """Audit the model ``Trainer.train()`` just trained; gate its release.

    At ``on_train_end`` (the final weights), on the main process only, trains reference
    models with the candidate's own recipe on an audit pool of the Trainer's
    ``train_dataset`` (members) and ``holdout``, scores the candidate, writes the report
    to ``output_dir``, logs it into the MLflow run that was active when training started
    (the Trainer's ``MLflowCallback`` run, ``report_to="mlflow"``, or your own
    ``mlflow.start_run()``), and applies the gate. Everything that can be checked before
    training is checked at ``on_train_begin``: a bad dataset or argument stops the run
    before its first step. Other processes of a multi-process run do nothing.

    Reference models start where the candidate started: ``factory`` (or the Trainer's
    ``model_init``) builds that model, loading pretrained weights from a local path for a
    fine-tune. When the `TrainingArguments` map exactly onto a `Recipe` (constant
    learning rate, no warmup, whole epochs, adamw_torch or sgd without weight decay, no
    label smoothing or gradient accumulation, the stock Trainer, the model's own loss
    equal to cross-entropy of its logits) they train with privacy-gate's loops (batched
    when the model allows); otherwise (HF's default linear schedule included) each trains
    with its own Trainer of the candidate's class and arguments. The report's
    ``audit.training`` says which and why.

    Args:
        holdout: non-member records, a dataset of dict examples like the train set's
            (default: the Trainer's ``eval_dataset``, with a warning).
        factory: builds a fresh model, the candidate's starting point (default: the
            Trainer's ``model_init``; one of the two is required).
        input_key: the examples' input tensor (default: the first of ``pixel_values``,
            ``input_values``, ``input_features``, ``input_ids``, ``x``, ``inputs``);
            examples carry it and ``labels`` (or ``label``) only, as far as the model's
            forward is concerned.
        config: an ``AuditConfig`` or the path of a YAML policy (default: the packaged
            default policy, analysing the ``subgroups`` given here).
        patient_ids: aligned with the pool (train records, then holdout records), or a
            callable ``(split, index) -> id`` with ``split`` "train" or "holdout".
        subgroups: column name -> values aligned with the pool, or such a callable.
        reference_models: K, even (default 64), or ``"auto"`` / an ``AdaptivePlan``.
        backend: a registered backend, e.g. "auto" (batched when the recipe and model
            allow, else one model at a time), "sequential" (a Trainer per model).
        seed: seeds the plan and the reference models.
        on_fail: "raise" (`privacy_gate.errors.PrivacyGateFailed`), "warn", or "tag" (the
            MLflow run's ``privacy_gate.status`` tag, which it gets in any case; a
            warning without a run). An audit that cannot finish always raises.
        output_dir: report directory (default ``<TrainingArguments.output_dir>/privacy_audit``).
        task: "multiclass" (default), "binary" or "multilabel".
        plots: also write report.md / report.html with plots.
        backend_options: the backend's options by name (e.g. ``{"group_size": 8}``).

    Example:
        >>> callback = PrivacyAuditCallback(reference_models=16, on_fail="warn")
        >>> callback.audited_
        False
    """

    def __init__(
        self,
        *,
        holdout: Any = None,
        factory: Callable[[], nn.Module] | None = None,
        input_key: str | None = None,
        config: Any = None,
        patient_ids: Metadata | None = None,
        subgroups: Mapping[str, Metadata] | None = None,
        reference_models: int | str | AdaptivePlan = DEFAULT_REFERENCE_MODELS,
        backend: str = "auto",
        seed: int = 0,
        on_fail: str = "raise",
        output_dir: str | os.PathLike[str] | None = None,
        task: str = "multiclass",
        plots: bool = True,
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.settings: HFAuditSettings = validate_settings(
            config=config,
            holdout=holdout,
            factory=factory,
            input_key=input_key,
            patient_ids=patient_ids,
            subgroups=subgroups,
            reference_models=reference_models,
            backend=backend,
            seed=seed,
            on_fail=on_fail,
            output_dir=output_dir,
            task=task,
            plots=plots,
            backend_options=backend_options,
        )
        self.audited_ = False
        self.status_: str | None = None
        self.outcome_: Outcome | None = None
        self._trainer: Any = None
        self._prepared: PreparedFit | None = None

    def set_trainer(self, trainer: Any) -> None:
        """Name the Trainer explicitly (found by itself otherwise: `_compat`)."""
        self._trainer = trainer

    # Hooks: one guard, one call.
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and not self.audited_:
            self._prepared = prepare_fit(self._find_trainer(), self.settings, Trainer)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and self._prepared is not None:
            self._audit(state)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the Trainer and the pool."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_trainer", "_prepared")}

    def _find_trainer(self) -> Any:
        trainer = self._trainer or calling_trainer(self)
        if trainer is None:
            raise ConfigError(
                f"{OWNER} cannot find the Trainer it is attached to (Hugging Face passes "
                "callbacks no Trainer). HINT: call callback.set_trainer(trainer) before "
                "trainer.train()."
            )
        return trainer

    def _audit(self, state: Any) -> None:
        """The candidate is the Trainer's own ``model`` (unwrapped, the final weights)."""
        prepared, self._prepared = self._prepared, None
        assert prepared is not None
        stopped = None
        if 0 < int(state.global_step) < int(state.max_steps):
            stopped = (int(state.global_step), int(state.max_steps))
            warnings.warn(
                f"{OWNER}: training stopped at step {stopped[0]} of {stopped[1]} (an "
                "EarlyStoppingCallback, say), but reference models train the whole schedule: "
                "they may leak more than the candidate. HINT: for a faithful audit, retrain "
                "the candidate with the number of epochs it stopped at.",
                UserWarning,
                stacklevel=3,
            )
        outcome = run_fit_audit(prepared, prepared.trainer.model, self.settings, stopped)
        self.audited_, self.status_, self.outcome_ = True, outcome.status, outcome
        action = decide_action(outcome.status, self.settings.on_fail)
        if action is Action.NONE:
            _LOG.info("%s", outcome.summary())
        for caveat in outcome.result.decision.warnings:
            _LOG.warning("privacy-gate: %s", caveat)
        if action is Action.RAISE:
            raise outcome.failure()
        if action is Action.TAG and outcome.mlflow_run is not None:
            _LOG.warning("%s (tagged on MLflow run %s)", outcome.summary(), outcome.mlflow_run)
        elif action is Action.TAG:
            warnings.warn(
                f"{outcome.summary()}. on_fail='tag' found no MLflow run to tag, so this is a "
                "warning. HINT: report_to='mlflow' in TrainingArguments, or train inside "
                "mlflow.start_run().",
                UserWarning,
                stacklevel=3,
            )
        elif action is Action.WARN:
            warnings.warn(outcome.summary(), UserWarning, stacklevel=3)
