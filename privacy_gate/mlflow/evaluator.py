"""The audit as an MLflow evaluator: ``mlflow.models.evaluate(..., evaluators=["privacy_gate"])``.

The evaluated data are the model's training records (members); everything else comes
through ``evaluator_config={"privacy_gate": {...}}``:

- ``model_factory``: a callable or an import path ``"package.module:callable"`` building the
  untrained ``torch.nn.Module`` (reference models are trained from it);
- ``holdout``: ``(features, labels)`` of non-member records of the same population;
- optional: ``recipe`` (mapping, the model's own training recipe), ``reference_models``
  (default 64, or ``"auto"`` with optional ``max_reference_models`` and ``round_size``:
  an adaptive audit), ``seed``, ``backend`` (and its ``backend_options``), ``task``,
  ``policy`` (mapping or YAML path),
  ``patient_ids`` and ``subgroups`` (aligned with members then holdout), ``out_dir``.

The evaluated model must be a PyTorch model (its raw ``nn.Module`` is the candidate).
Metrics, tags and artifacts go into the evaluation run through `log_report`; a signed audit
binds the evaluated logged model's files (checked to hold the audited weights), so a
version registered from that model can be promoted.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator

from privacy_gate.adaptive import parse_reference_models
from privacy_gate.config import AuditConfig, default_config, load_config, parse_config
from privacy_gate.errors import ConfigError, check_known_keys, integer_at_least
from privacy_gate.mlflow.audited_model import stored_model_files
from privacy_gate.mlflow.logging import log_report, report_metrics
from privacy_gate.model_files import ModelFiles
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS
from privacy_gate.signals import Task
from privacy_gate.training.audit import run_audit
from privacy_gate.training.backends import backend_spec, make_backend, parse_backend_options
from privacy_gate.training.data import AuditData
from privacy_gate.training.job import resolve
from privacy_gate.training.recipe import parse_recipe
from privacy_gate.training.reference import TrainingBackend

__all__ = ["PrivacyGateEvaluator"]

_CONFIG_KEYS = ("model_factory", "holdout", "recipe", "reference_models", "max_reference_models",
                "round_size", "seed", "backend", "backend_options", "task", "policy",
                "patient_ids", "subgroups", "out_dir")  # fmt: skip


def _backend(config: Mapping[str, Any]) -> TrainingBackend:
    """``backend`` and ``backend_options``, each option parsed by the backend."""
    name = backend_spec(config.get("backend", "auto"), "evaluator_config", ConfigError).name
    options = config.get("backend_options")
    parsed = parse_backend_options(name, options, "evaluator_config", ConfigError)
    return make_backend(name, **parsed)


def _policy(value: Any) -> AuditConfig:
    if value is None:
        return default_config()
    if isinstance(value, (str, Path)):
        return load_config(value)
    return parse_config(value, source="evaluator_config['policy']")


def _tensor(values: Any, *, labels: bool) -> torch.Tensor:
    array = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
    return torch.as_tensor(array, dtype=torch.int64 if labels else torch.float32)


def _evaluated_files(model: Any, digest: str | None) -> ModelFiles | None:
    """The evaluated logged model's stored files, checked to hold the audited weights
    (the signed audit binds them, so a version registered from this model can be promoted);
    None for a model that is not a logged model (then the audit cannot be promoted)."""
    model_id = getattr(getattr(model, "metadata", None), "model_id", None)
    if not model_id or digest is None:
        return None
    from mlflow.tracking import MlflowClient

    return stored_model_files(MlflowClient(), f"models:/{model_id}", digest)


class PrivacyGateEvaluator(ModelEvaluator):
    """Patient-level membership-inference audit of a PyTorch classifier."""

    @classmethod
    def can_evaluate(cls, *, model_type: Any, evaluator_config: Any, **kwargs: Any) -> bool:
        return bool(model_type == "classifier")

    def evaluate(
        self,
        *,
        model_type: Any,
        dataset: Any,
        run_id: str,
        evaluator_config: Mapping[str, Any] | None,
        model: Any = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        config = dict(evaluator_config or {})
        check_known_keys(config, _CONFIG_KEYS, "evaluator_config for privacy_gate")
        for required in ("model_factory", "holdout"):
            if config.get(required) is None:
                raise ConfigError(
                    f"evaluator_config['{required}'] is required by the privacy_gate "
                    "evaluator. HINT: model_factory builds the untrained model; holdout is "
                    "(features, labels) of records the model did not train on."
                )
        candidate = model.get_raw_model() if model is not None else None
        if not isinstance(candidate, torch.nn.Module):
            raise ConfigError(
                "The privacy_gate evaluator audits PyTorch models (logged with "
                f"mlflow.pytorch). Got {type(candidate).__name__} instead."
            )
        factory = config["model_factory"]
        if isinstance(factory, str):
            factory = resolve(factory, "model_factory")
        holdout_x, holdout_y = config["holdout"]
        data = AuditData(
            train_inputs=_tensor(dataset.features_data, labels=False),
            train_labels=_tensor(dataset.labels_data, labels=True),
            holdout_inputs=_tensor(holdout_x, labels=False),
            holdout_labels=_tensor(holdout_y, labels=True),
            task=Task(config.get("task", "multiclass")),
            patient_ids=config.get("patient_ids"),
            columns=config.get("subgroups") or {},
        )
        with tempfile.TemporaryDirectory(prefix="privacy_gate_") as tmp:
            out = Path(config.get("out_dir") or tmp)
            result = run_audit(
                functools.partial(factory),
                data,
                recipe=parse_recipe(config.get("recipe")),
                config=_policy(config.get("policy")),
                reference_models=parse_reference_models(
                    config.get("reference_models", DEFAULT_REFERENCE_MODELS),
                    owner="evaluator_config",
                    max_reference_models=config.get("max_reference_models"),
                    round_size=config.get("round_size"),
                ),
                backend=_backend(config),
                seed=integer_at_least("evaluator_config", "seed", config.get("seed", 0), lo=0),
                candidate=candidate,
                out_dir=out,
            )
            digest = result.report.audit.model_sha256
            log_report(result.report, run_id=run_id, out_dir=out, model_sha256=digest,
                       model_files=_evaluated_files(model, digest))  # fmt: skip
        return EvaluationResult(  # type: ignore[no-untyped-call]
            metrics=report_metrics(result.report), artifacts={}, run_id=run_id
        )
