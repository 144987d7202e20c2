"""`PrivacyAuditCallback`'s behaviour, shared by the two Lightning namespaces.

``pytorch_lightning.Trainer`` and ``lightning.pytorch.Trainer`` each accept only callbacks
of their own class hierarchy, so the public classes (`lightning_callbacks.pytorch_lightning`
and `lightning_callbacks.lightning`) are this mixin plus the namespace's ``Callback``; they
differ only in their base class and the Trainer class that trains reference models.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from lightning_callbacks._audit_core import (
    Action,
    Outcome,
    check_fit,
    decide_action,
    prepare_fit,
    run_fit_audit,
)
from lightning_callbacks._averaging import averaging_callbacks, last_in_line, templates
from lightning_callbacks._distributed import check_distributed, train_and_gather
from lightning_callbacks._releases import check_releases
from lightning_callbacks._settings import AuditSettings, Metadata, validate_settings
from privacy_gate.adaptive import AdaptivePlan
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS
from privacy_gate.training.data import AuditData

__all__ = ["CALLBACK_DOC", "PrivacyAuditBehaviour"]

_LOG = logging.getLogger("lightning_callbacks")

CALLBACK_DOC = """Audit the model ``Trainer.fit`` just trained; gate its release.

After training (``on_train_end``: the final weights), trains reference models with
the fit's own recipe on an audit pool of the train set (members) and a holdout,
scores the trained model, writes the report to ``output_dir`` and puts the key
figures into ``trainer.callback_metrics`` under the keys MLflow gets too
(`privacy_gate.metrics.TRAINER_METRICS`: ``privacy_gate/patient_auc/max``,
``privacy_gate/patients_at_risk``, ``privacy_gate/noise_floor/max_patient_auc_q95``,
``privacy_gate/power/detectable_auc``, ``privacy_gate/aggregate/auc``), and
``privacy_gate/passed``. Under a multi-process strategy (DDP) every rank trains its
share of the reference models and rank zero audits; the verdict reaches every rank
(docs: the Lightning tutorial, "Multi-process (DDP) training").

Args:
    config: an ``AuditConfig`` or the path of a YAML policy (default: the packaged
        default policy, analysing the ``subgroups`` given here).
    holdout: non-member records, a Dataset or DataLoader of ``(input, label)``
        (default: the datamodule's test set, else its validation set with a warning).
    patient_ids: aligned with the pool (train records, then holdout records), or a
        callable ``(split, index) -> id`` with ``split`` "train" or "holdout".
    subgroups: column name -> values aligned with the pool, or such a callable.
    reference_models: K, even (default 64), or ``"auto"`` (or a
        `privacy_gate.adaptive.AdaptivePlan`): train rounds of reference models and stop
        at the first look that settles the verdict.
    backend: a registered backend (`privacy_gate.training.backends`), e.g. "auto"
        (batched when the recipe allows, else one Lightning Trainer per reference
        model); docs/how-to lists the others and their options.
    seed: seeds the plan and the reference models.
    on_fail: "raise" (`PrivacyGateFailed`), "warn", or "tag" (``privacy_gate.status``
        on the Trainer's MLFlowLogger run, which gets the whole audit in any case; a
        warning without one). An audit error always raises.
    output_dir: report directory (default ``<default_root_dir>/privacy_audit``).
    model_factory: builds an untrained module (default
        ``type(module)(**module.hparams)``).
    task: "multiclass" (default), "binary" or "multilabel"; forward returns logits.
    plots: also write report.md / report.html with plots.
    backend_options: the backend's options by name, parsed by the backend (e.g.
        ``{"group_size": 8}``, or a cluster's settings); an option the backend does not
        take is an error.
    log_model: with an MLFlowLogger, also log the audited module itself (the whole
        LightningModule, pt2 export) into its run, bound to the audit: the signed report
        names its files, so that version can be promoted through the gated registry.
        Logging another object (the inner network, say) gives other weights digests and
        is refused as "weights changed after the audit".

Example:
    >>> callback = PrivacyAuditCallback(reference_models=32, on_fail="warn")
    >>> callback.state_dict()
    {'audited': False, 'status': None, 'report_sha256': None}
"""
"""The docstring of both public callback classes (they differ only in namespace)."""


class PrivacyAuditBehaviour:
    """Audits the model that ``Trainer.fit`` just trained; see the public classes."""

    #: The Trainer class of this namespace (reference models train with it).
    trainer_class: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        *,
        config: Any = None,
        holdout: Any = None,
        patient_ids: Metadata | None = None,
        subgroups: Mapping[str, Metadata] | None = None,
        reference_models: int | str | AdaptivePlan = DEFAULT_REFERENCE_MODELS,
        backend: str = "auto",
        seed: int = 0,
        on_fail: str = "raise",
        output_dir: str | os.PathLike[str] | None = None,
        model_factory: Callable[[], nn.Module] | None = None,
        task: str = "multiclass",
        plots: bool = True,
        backend_options: Mapping[str, Any] | None = None,
        log_model: bool = True,
    ) -> None:
        super().__init__()
        check_releases(type(self).__name__)
        self.settings: AuditSettings = validate_settings(
            config=config,
            holdout=holdout,
            patient_ids=patient_ids,
            subgroups=subgroups,
            reference_models=reference_models,
            backend=backend,
            seed=seed,
            on_fail=on_fail,
            output_dir=output_dir,
            model_factory=model_factory,
            task=task,
            plots=plots,
            backend_options=backend_options,
            log_model=log_model,
        )
        self.audited_ = False
        self.status_: str | None = None
        self.report_sha256_: str | None = None
        self.outcome_: Outcome | None = None
        self._data: AuditData | None = None  # the pool, built and checked before training

    # Hooks: one guard, one call.
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            check_fit(trainer, pl_module, self.settings)
            check_distributed(trainer, self.settings)
            # Weight averaging is part of the recipe (copies as before training), and the
            # audit runs after every callback that changes the weights at the end.
            self._averaging = templates(averaging_callbacks(trainer))
            last_in_line(trainer, self)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """The first hook with the train loader set up and before the first step: the
        pool, its labels, metadata and the module's outputs are checked here, so bad
        input stops the fit before it trains, not after."""
        every_rank = trainer.world_size > 1  # each trains its share of the models
        if (
            not self.audited_
            and not trainer.fast_dev_run
            and (every_rank or trainer.is_global_zero)
        ):
            self._data = prepare_fit(trainer, pl_module, self.settings)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """After the last optimizer step: the audit sees the final weights, and a
        checkpoint saved after ``fit`` (``trainer.save_checkpoint``) holds its state."""
        if not trainer.fast_dev_run:
            self._audit_once(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "audited": self.audited_,
            "status": self.status_,
            "report_sha256": self.report_sha256_,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Tolerant of older checkpoints: missing keys mean "not audited"."""
        self.audited_ = bool(state_dict.get("audited", False))
        self.status_ = state_dict.get("status")
        self.report_sha256_ = state_dict.get("report_sha256")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without what the Trainer attached (``log``/``log_dict``, bound methods of
        the LightningModule): the callback keeps no reference to the trainer or module."""
        dropped = ("log", "log_dict", "_data", "_averaging")  # rebuilt when needed
        return {k: v for k, v in self.__dict__.items() if k not in dropped}

    def _audit_once(self, trainer: Any, pl_module: Any) -> None:
        if self.audited_:
            if trainer.is_global_zero:
                _LOG.info(
                    "privacy-gate: this fit was already audited (status %s, report sha256 %s); "
                    "not auditing again.",
                    self.status_, self.report_sha256_,
                )  # fmt: skip
            if self.status_ is not None:
                self._act(decide_action(self.status_, self.settings.on_fail), None)
            return
        outcome: Outcome | None = None
        error: Exception | None = None
        shares = None
        if trainer.world_size > 1:  # every rank trains its share of the reference models
            shares, error = train_and_gather(
                trainer,
                pl_module,
                self.settings,
                self.trainer_class,
                getattr(self, "_data", None),
                getattr(self, "_averaging", None),
            )
        if trainer.is_global_zero and error is None:  # scoring and the report: rank zero
            try:
                outcome = run_fit_audit(
                    trainer,
                    pl_module,
                    self.settings,
                    self.trainer_class,
                    getattr(self, "_data", None),
                    shares,
                    getattr(self, "_averaging", None),
                )
            except Exception as exc:
                error = exc
        self._data = None
        shared = trainer.strategy.broadcast(
            outcome if error is None else f"{type(error).__name__}: {error}", src=0
        )
        if error is not None:
            raise error  # an audit that cannot finish always raises
        if not isinstance(shared, Outcome):
            raise RuntimeError(f"The privacy audit failed on global rank zero: {shared}")
        self.audited_, self.status_ = True, shared.status
        self.report_sha256_, self.outcome_ = shared.report_sha256, shared
        for name, value in shared.metrics.items():
            trainer.callback_metrics[name] = torch.tensor(value)
        action = decide_action(shared.status, self.settings.on_fail)
        if trainer.is_global_zero:
            if action is Action.NONE:  # otherwise the action states the verdict, once
                _LOG.info("%s", shared.summary)
            for caveat in shared.warnings:
                _LOG.warning("privacy-gate: %s", caveat)
        self._act(action, shared)

    def _act(self, action: Action, outcome: Outcome | None) -> None:
        if action is Action.NONE:
            return
        if outcome is None:  # a stored decision of an earlier run of this fit
            earlier = f"an earlier audit of this fit (report sha256 {self.report_sha256_})"
            outcome = Outcome(
                status=self.status_ or "error",
                metrics={},
                summary=f"privacy-gate: {self.status_}, from {earlier}",
                report=earlier,
            )
        if action is Action.RAISE:
            raise outcome.failure()
        if action is Action.TAG:
            if outcome.mlflow_run is not None:  # privacy_gate.status is tagged on the run
                _LOG.warning("%s (tagged on MLflow run %s)", outcome.summary, outcome.mlflow_run)
                return
            warnings.warn(
                f"{outcome.summary}. on_fail='tag' found no MLFlowLogger run to tag, so this "
                "is a warning. HINT: add an MLFlowLogger (sqlite:/// tracking URI) to the "
                "Trainer.",
                UserWarning,
                stacklevel=3,
            )
            return
        warnings.warn(outcome.summary, UserWarning, stacklevel=3)
