"""The ``ray:`` section of audit.yaml: validated options of the Ray backend."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from privacy_gate.errors import (
    ConfigError,
    InputError,
    check_known_keys,
    invalid_value,
)

INSTALL_HINT = "HINT: pip install 'privacy-gate[ray]'."
_UNITS = {"": 1, "b": 1, **{f"{p}{b}": scale**power
                         for power, p in enumerate("kmgt", start=1)
                         for b, scale in (("", 1000), ("b", 1000), ("ib", 1024))}}  # fmt: skip


def _invalid(name: str, expected: str, got: Any, hint: str | None = None) -> ConfigError:
    return ConfigError(invalid_value(name, "ray", expected, got, hint))


def _is_count(value: Any, *, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """Where and how reference models train on Ray (``ray:`` in audit.yaml).

    Attributes:
        address: the cluster (``ray://head:10001``, ``head:6379`` or ``auto``); None: the
            ``RAY_ADDRESS`` environment variable, else a new local Ray instance. Unused
            when this process is already connected (``ray.init`` was called before).
        num_cpus: CPUs per task; also the task's torch threads.
        num_gpus: GPUs per task (a fraction shares one GPU); 0 trains on CPU. The
            recipe's loop trains on one device.
        memory: bytes of memory Ray reserves per task (None: no reservation).
        models_per_task: reference models one task trains at once as a batched ensemble,
            or "auto": as many as the task's memory holds, at most the local batched
            backend's group size (so the groups, hence the report, equal the local ones).
        max_retries: how often Ray re-runs a task whose worker died (crash, out-of-memory
            kill, preempted node).
        retry_exceptions: exceptions raised in a task that are transient and retried
            (within ``max_retries``); any other exception fails the task at once.
        runtime_env: the tasks' Ray runtime environment, e.g. ``{"working_dir": "."}`` so
            that workers can import the model factory and the data loader.
    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    models_per_task: int | Literal["auto"] = "auto"
    max_retries: int = 3
    retry_exceptions: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    runtime_env: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise _invalid("address", "a Ray address or null", self.address,
                           "e.g. ray://head:10001, head:6379 or auto")  # fmt: skip
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _invalid(name, "a number >= 0", value)
            if not 0 <= value < math.inf:
                raise _invalid(name, "a number >= 0", value)
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise _invalid("num_cpus", "a number > 0 when num_gpus is 0", self.num_cpus)
        if self.memory is not None and not _is_count(self.memory, least=1):
            raise _invalid("memory", "a number of bytes >= 1 or null", self.memory)
        if self.models_per_task != "auto" and not _is_count(self.models_per_task, least=1):
            raise _invalid("models_per_task", "an integer >= 1 or 'auto'", self.models_per_task)
        if not _is_count(self.max_retries, least=0):
            raise _invalid("max_retries", "an integer >= 0", self.max_retries)
        if not all(isinstance(k, type) and issubclass(k, BaseException)
                   for k in self.retry_exceptions):  # fmt: skip
            raise _invalid("retry_exceptions", "a tuple of exception classes",
                           self.retry_exceptions)  # fmt: skip
        if self.runtime_env is not None and not isinstance(self.runtime_env, Mapping):
            raise _invalid("runtime_env", "a mapping or null", self.runtime_env,
                           "e.g. {working_dir: .}")  # fmt: skip

    def task_options(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.remote(...).options`` for a training task."""
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "max_retries": self.max_retries,
            "retry_exceptions": list(self.retry_exceptions) or False,
        }
        if self.memory is not None:
            options["memory"] = self.memory
        if self.runtime_env is not None:
            options["runtime_env"] = dict(self.runtime_env)
        return options

    def provenance(self) -> dict[str, Any]:
        """What the report records of these options (no address: it may name hosts)."""
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "memory": self.memory,
            "max_retries": self.max_retries,
            "runtime_env": sorted(self.runtime_env) if self.runtime_env else [],
        }


_YAML_KEYS = tuple(f.name for f in fields(RayOptions) if f.name != "retry_exceptions")


def parse_memory(value: Any, name: str = "memory") -> int | None:
    """Bytes from an integer or a string with a unit (``"8GiB"``, ``"512MB"``).

    >>> parse_memory("1.5 GiB")
    1610612736
    >>> parse_memory(None) is None
    True
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if not isinstance(value, str) or match is None or match.group(2).lower() not in _UNITS:
        raise _invalid(name, "bytes as an integer or a string like '8GiB'", value,
                       "units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB")  # fmt: skip
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_ray_options(data: Mapping[str, Any] | None) -> RayOptions:
    """Build `RayOptions` from the ``ray:`` section of audit.yaml, rejecting unknown keys.

    >>> parse_ray_options({"num_cpus": 2, "memory": "4GiB"}).memory
    4294967296
    """
    if data is None:
        return RayOptions()
    if not isinstance(data, Mapping):
        raise ConfigError(invalid_value("ray", "audit config", "a mapping", data))
    check_known_keys(data, _YAML_KEYS, "ray")
    values = dict(data)
    if "memory" in values:
        values["memory"] = parse_memory(values["memory"])
    return RayOptions(**values)


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise InputError(
            f"The 'ray' backend needs the ray package ({exc}). {INSTALL_HINT}"
        ) from None
    return ray
