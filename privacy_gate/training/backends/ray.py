"""The ``ray`` backend: reference models as Ray tasks on a cluster
(`privacy_gate.training.ray_backend`), with the cluster's options in ``ray:``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

from privacy_gate.errors import ConfigError, InputError, invalid_value
from privacy_gate.training.backends.local import _GROUP_SIZE, group_size_of
from privacy_gate.training.backends.registry import BackendSpec, FitPlan, OptionParser, Supports
from privacy_gate.training.ray_backend import RayBackend, RayOptions, parse_ray_options
from privacy_gate.training.reference import TrainingBackend, TrainingRun

__all__ = ["SPEC"]


def _ray_options(value: Any, owner: str) -> RayOptions:
    """``ray:`` as a `RayOptions` or a mapping of its fields (audit.yaml's section)."""
    if isinstance(value, RayOptions):
        return value
    if isinstance(value, Mapping):
        try:
            return parse_ray_options(value)
        except ConfigError as exc:
            raise InputError(
                invalid_value("ray", owner, "RayOptions or a mapping of its fields",
                              dict(value), str(exc))
            ) from None  # fmt: skip
    raise InputError(invalid_value("ray", owner, "a RayOptions or a mapping of its fields", value))


class _Ray(BackendSpec):
    name = "ray"
    supports: ClassVar[Supports] = Supports(devices=frozenset())  # RayOptions place models
    options: ClassVar[dict[str, OptionParser]] = {"ray": _ray_options, "group_size": _GROUP_SIZE}

    def check_factory(self, factory: Callable[[], Any], what: str) -> None:
        from privacy_gate.training.ray_backend import check_picklable

        check_picklable(what, factory)

    def build(self, **options: Any) -> TrainingBackend:
        ray = options.pop("ray", None)
        return RayBackend(options=ray or RayOptions(), **options)

    def unavailable(self) -> str | None:
        if importlib.util.find_spec("ray") is None:
            return "the ray package is not installed; pip install 'privacy-gate[ray]'"
        return None

    def fit_plan(self, unbatchable: str | None, owner: str) -> FitPlan:
        """The recipe's batched groups as tasks when it allows them, else one Trainer per
        task."""
        return FitPlan(self.name, unbatchable is not None)

    def round_multiple(self, backend: TrainingBackend) -> int:
        return group_size_of(backend)

    def merge_rounds(self, before: TrainingRun, after: TrainingRun) -> TrainingRun:
        """Also the Ray section: the latest cluster figures, the tasks added up."""
        merged = super().merge_rounds(before, after)
        ray, more = before.details.get("ray"), after.details.get("ray")
        if isinstance(ray, dict) and isinstance(more, dict):
            section = {
                **ray,
                **{k: v for k, v in more.items() if v is not None},
                "tasks": ray.get("tasks", 0) + more.get("tasks", 0),
            }
            merged = replace(merged, details={**merged.details, "ray": section})
        return merged


SPEC = _Ray()
