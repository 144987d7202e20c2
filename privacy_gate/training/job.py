"""``privacy-gate audit --config audit.yaml``: an audit described in YAML.

The YAML names the model factory and the data loader by import path
(``package.module:callable``), the recipe, K (or ``reference_models: auto`` with optional
``max_reference_models`` and ``round_size``: an adaptive audit), backend, seed, the policy,
the output directory and the ``device`` (auto | cpu | cuda[:i]). The backend's own options
are top-level keys that the backend parses (`privacy_gate.training.backends`): ``workers``,
``group_size``, and ``backend: ray``'s ``ray:`` section
(`privacy_gate.training.ray_backend.RayOptions`).
Factory: ``make_model(**model_args) -> torch.nn.Module`` (untrained).
Loader: ``load_data(**data_args) -> privacy_gate.training.AuditData``.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privacy_gate.adaptive import AdaptivePlan, parse_reference_models
from privacy_gate.config import AuditConfig, default_config, load_config, parse_config
from privacy_gate.errors import ConfigError, check_known_keys, invalid_value
from privacy_gate.pipeline import AuditResult
from privacy_gate.plan import DEFAULT_REFERENCE_MODELS
from privacy_gate.report_model import AuditReport
from privacy_gate.training.audit import run_audit, store_root, trained_candidate_state
from privacy_gate.training.augment import parse_augmentations
from privacy_gate.training.backends import (
    BACKENDS,
    backend_spec,
    make_backend,
    parse_backend_options,
)
from privacy_gate.training.data import AuditData
from privacy_gate.training.device import AUTO, resolve_device
from privacy_gate.training.recipe import Recipe, parse_recipe
from privacy_gate.training.steps import ModelFactory
from privacy_gate.training.weights import weights_sha256

__all__ = [
    "AuditJob",
    "MlflowTarget",
    "audit_yaml_keys",
    "job_factory",
    "load_data",
    "load_job",
    "release_model",
    "resolve",
    "run_job",
]

_KEYS = (
    "model",
    "model_args",
    "data",
    "data_args",
    "recipe",
    "reference_models",
    "max_reference_models",
    "round_size",
    "backend",
    "seed",
    "out",
    "policy",
    "candidate",
    "mlflow",
    "device",
    "augmentations",
)
_MLFLOW_KEYS = ("tracking_uri", "experiment", "run_name", "registered_model", "alias",
                "registry_uri")  # fmt: skip
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_ALIAS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


@dataclass(frozen=True, kw_only=True)
class MlflowTarget:
    """Where ``privacy-gate audit`` logs the audit as an MLflow run; with
    ``registered_model``, the release path too: the candidate logged as a model in that
    run, registered, and ``alias`` asked of the gated registry (``registry_uri``)."""

    tracking_uri: str
    experiment: str = "privacy-gate"
    run_name: str | None = None
    registered_model: str | None = None
    alias: str = "champion"
    registry_uri: str | None = None

    @property
    def gated_registry_uri(self) -> str:
        """``registry_uri``, else the gated store on the tracking database
        (``privacygate+sqlite:///...``), else the tracking server's own registry."""
        if self.registry_uri:
            return self.registry_uri
        scheme = self.tracking_uri.split(":", 1)[0].split("+", 1)[0]
        if scheme in _DATABASE_SCHEMES:
            return f"privacygate+{self.tracking_uri}"
        return self.tracking_uri


def _parse_mlflow(value: Any) -> MlflowTarget | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(invalid_value("mlflow", "audit config", "a mapping", value))
    check_known_keys(value, _MLFLOW_KEYS, "mlflow")
    uri = value.get("tracking_uri")
    schemes = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "databricks")
    if not isinstance(uri, str) or not uri.startswith(schemes):
        raise ConfigError(
            invalid_value(
                "tracking_uri",
                "mlflow",
                f"a tracking URI starting with one of {list(schemes)}",
                uri,
                "e.g. sqlite:///out/mlflow.db (a plain directory store errors in MLflow 3)",
            )
        )
    for name in ("experiment", "run_name", "registered_model", "alias", "registry_uri"):
        if value.get(name) is not None and not (
            isinstance(value[name], str) and value[name].strip()
        ):
            raise ConfigError(invalid_value(name, "mlflow", "a non-empty string", value[name]))
    alias = value.get("alias") or "champion"
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(
            invalid_value(
                "alias",
                "mlflow",
                "a registered-model alias (letters, digits, '_', '-'; not 'latest' or v<N>, "
                "which MLflow reserves)",
                alias,
                "e.g. champion",
            )
        )
    if value.get("alias") is not None and value.get("registered_model") is None:
        raise ConfigError(
            invalid_value(
                "alias", "mlflow", "given with registered_model (the model it promotes)", alias,
                "add registered_model: NAME, or drop alias",
            )
        )  # fmt: skip
    return MlflowTarget(tracking_uri=uri, experiment=value.get("experiment") or "privacy-gate",
                        run_name=value.get("run_name"),
                        registered_model=value.get("registered_model"), alias=alias,
                        registry_uri=value.get("registry_uri"))  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AuditJob:
    """A validated audit.yaml."""

    model: str
    data: str
    recipe: Recipe
    policy: AuditConfig
    model_args: Mapping[str, Any] = field(default_factory=dict)
    data_args: Mapping[str, Any] = field(default_factory=dict)
    reference_models: int | AdaptivePlan = DEFAULT_REFERENCE_MODELS
    backend: str = "auto"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    """The backend's options, parsed by the backend (``workers``, ``ray``, ...)."""
    seed: int = 0
    out: Path | None = None
    candidate: Path | None = None
    mlflow: MlflowTarget | None = None
    device: str = AUTO
    augmentations: tuple[str, ...] = ()


def resolve(import_path: str, field_name: str) -> Callable[..., Any]:
    """Import ``package.module:attribute`` (the working directory is importable)."""
    module_name, _, attribute = import_path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            invalid_value(
                field_name, "audit config", "an import path 'package.module:callable'", import_path
            )
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Cannot import {field_name} {import_path!r}: {exc}. HINT: run from "
            "the directory that contains the package, or install it."
        ) from None
    if not callable(target):
        raise ConfigError(f"The {field_name} {import_path!r} is not callable.")
    return target  # type: ignore[no-any-return]


def _mapping(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(invalid_value(name, "audit config", "a mapping", value))
    return dict(value)


def _policy(value: Any, base: Path) -> AuditConfig:
    if value is None:
        return default_config()
    if isinstance(value, str):
        path = Path(value)
        return load_config(path if path.is_absolute() else base / path)
    return parse_config(value, source="policy")


def _backend_option_keys() -> tuple[str, ...]:
    """Every registered backend's option keys (top-level keys of audit.yaml)."""
    return tuple(sorted({key for spec in BACKENDS.values() for key in spec.options}))


def audit_yaml_keys() -> tuple[str, ...]:
    """Every top-level key audit.yaml takes: the job's own and the backends' options."""
    return (*_KEYS, *_backend_option_keys())


def parse_job(data: Any, *, base: Path = Path(".")) -> AuditJob:
    """Validate an audit config mapping; relative paths are resolved against ``base``."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"The audit config must be a YAML mapping with keys {list(audit_yaml_keys())}."
        )
    check_known_keys(data, audit_yaml_keys(), "the audit config")
    for required in ("model", "data"):
        if not isinstance(data.get(required), str):
            raise ConfigError(
                invalid_value(
                    required,
                    "audit config",
                    "an import path 'package.module:callable'",
                    data.get(required),
                )
            )
    k = parse_reference_models(
        data.get("reference_models", DEFAULT_REFERENCE_MODELS),
        owner="audit config",
        max_reference_models=data.get("max_reference_models"),
        round_size=data.get("round_size"),
    )
    backend = backend_spec(data.get("backend", "auto"), "audit config", ConfigError).name
    value = data.get("seed", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(invalid_value("seed", "audit config", "a non-negative integer", value))
    backend_options = parse_backend_options(
        backend,
        {key: data[key] for key in _backend_option_keys() if data.get(key) is not None},
        "audit config",
        ConfigError,
    )
    if data.get("recipe") is not None and not isinstance(data["recipe"], Mapping):
        raise ConfigError(invalid_value("recipe", "audit config", "a mapping", data["recipe"]))
    out = data.get("out")
    candidate = data.get("candidate")
    device = data.get("device", AUTO)
    resolve_device(device, "audit config")  # a wrong name or a missing GPU fails up front
    parse_augmentations(data.get("augmentations"))
    return AuditJob(
        model=data["model"],
        data=data["data"],
        recipe=parse_recipe(data.get("recipe")),
        policy=_policy(data.get("policy"), base),
        model_args=_mapping(data, "model_args"),
        data_args=_mapping(data, "data_args"),
        reference_models=k,
        backend=backend,
        backend_options=backend_options,
        seed=data.get("seed", 0),
        out=Path(out) if out is not None else None,
        candidate=(base / candidate) if isinstance(candidate, str) else None,
        mlflow=_parse_mlflow(data.get("mlflow")),
        device=str(device),
        augmentations=tuple(data.get("augmentations") or ()),
    )


def load_job(path: str | Path) -> AuditJob:
    """Read and validate an audit.yaml."""
    from privacy_gate.config import read_config_yaml

    return parse_job(read_config_yaml(path), base=Path(path).parent)


def job_factory(job: AuditJob) -> ModelFactory:
    """The model factory the job names, with its ``model_args``."""
    return functools.partial(resolve(job.model, "model"), **job.model_args)


def load_data(job: AuditJob) -> AuditData:
    """The audit pool from the job's data loader (loaded once: `run_job` and
    `release_model` both take it)."""
    data = resolve(job.data, "data")(**job.data_args)
    if not isinstance(data, AuditData):
        raise ConfigError(
            f"The data loader {job.data!r} must return "
            f"privacy_gate.training.AuditData. Got {type(data).__name__}."
        )
    return data


def _given_candidate(job: AuditJob, factory: ModelFactory) -> nn.Module:
    """A model with the weights of the job's ``candidate`` file."""
    assert job.candidate is not None
    candidate = factory()
    try:
        state = torch.load(job.candidate, map_location="cpu", weights_only=True)
        candidate.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"Cannot load the candidate weights {str(job.candidate)!r}: "
            f"{exc}. HINT: save them with torch.save(model.state_dict(), "
            "path)."
        ) from None
    return candidate


def run_job(
    job: AuditJob,
    *,
    out: Path | None = None,
    raw_ids: bool = False,
    plots: bool = True,
    data: AuditData | None = None,
) -> AuditResult:
    """Build the factory, load the data (unless given), run the audit, write the report."""
    factory = job_factory(job)
    data = load_data(job) if data is None else data
    candidate = _given_candidate(job, factory) if job.candidate is not None else None
    destination = out or job.out or Path("out/audit")
    return run_audit(
        factory,
        data,
        recipe=job.recipe,
        config=job.policy,
        reference_models=job.reference_models,
        backend=make_backend(job.backend, **job.backend_options),
        seed=job.seed,
        candidate=candidate,
        out_dir=destination,
        raw_ids=raw_ids,
        plots=plots,
        device=job.device,
        augmentations=parse_augmentations(list(job.augmentations) or None),
    )


def release_model(
    job: AuditJob, report: AuditReport, out: Path, data: AuditData
) -> tuple[nn.Module, np.ndarray]:
    """The audited candidate, rebuilt for its release (MLflow model logging), and one pool
    input of ``data`` (the audit's) as its example: the given weights (``candidate``) or
    those the audit trained and stored. Its weights digest must be the report's: a stale
    store is an error, never a model released under another model's audit."""
    factory = job_factory(job)
    if job.candidate is not None:
        model = _given_candidate(job, factory)
    else:
        state = trained_candidate_state(out, report)
        if state is None:
            raise ConfigError(
                f"The audit's candidate weights are not in {str(store_root(out))!r}, so the "
                "candidate cannot be registered. HINT: run the audit again with the same "
                "'out', or give the trained weights as 'candidate'."
            )
        model = factory()
        model.load_state_dict(state)
    model.eval()
    digest = weights_sha256(model)
    if digest != report.audit.model_sha256:
        raise ConfigError(
            f"The candidate weights found have SHA-256 {digest}, the audit's are "
            f"{report.audit.model_sha256}: they are not the audited model. HINT: run the "
            "audit again."
        )
    inputs, _ = data.pool()
    return model, inputs[:1].detach().cpu().numpy()
