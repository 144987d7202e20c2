"""Reference models trained as Ray tasks: scale-out over a cluster (the ``ray`` extra).

Each task trains one fixed group of reference models (a batched ensemble of
``models_per_task`` models, or one model with the recipe's loop or the caller's
``train_fn``) and returns their membership scores. The driver writes each task's scores
into the same `ScoreStore` as the local backends as soon as the task finishes
(``ray.wait``), so an interrupted audit resumes with what is finished, whichever backend
trained it.

Determinism: a task is a pure function of its models' seeds and subsets, so a task that
Ray re-runs (its worker died, its node was preempted) returns the same scores; the groups
are the local batched backend's fixed groups (models ``0..g-1``, ``g..2g-1``, ...), so with
the same group size the report equals the local one up to float rounding. Tasks never
write the store.

The whole module imports without Ray; Ray itself is imported when a cluster is used.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from privacy_gate.errors import (
    ConfigError,
    InputError,
    PrivacyGateError,
    check_known_keys,
    invalid_value,
)
from privacy_gate.signals import Task
from privacy_gate.training.data import AuditData
from privacy_gate.training.progress import Progress
from privacy_gate.training.recipe import Optimizer, Recipe
from privacy_gate.training.reference import (
    Augmentation,
    Fallback,
    TrainFunction,
    TrainingPlan,
    reference_name,
    train_and_score,
)
from privacy_gate.training.scoring import score_model
from privacy_gate.training.steps import ModelFactory, init_model
from privacy_gate.training.store import ScoreStore

__all__ = [
    "RayOptions",
    "RayTrainingFailed",
    "auto_models_per_task",
    "check_picklable",
    "parse_ray_options",
    "train_on_ray",
    "training_bytes_per_model",
]

_LOG = logging.getLogger("privacy_gate.training")
INSTALL_HINT = "HINT: pip install 'privacy-gate[ray]'."
#: Memory of a Ray worker process with torch imported, before any data (CPU tasks).
WORKER_BASE_BYTES = 768 * 2**20
_UNITS = {"": 1, "b": 1, **{f"{p}{b}": scale**power
                         for power, p in enumerate("kmgt", start=1)
                         for b, scale in (("", 1000), ("b", 1000), ("ib", 1024))}}  # fmt: skip


class RayTrainingFailed(PrivacyGateError, RuntimeError):
    """Ray tasks that failed for good (after their retries); the reference models that
    finished are kept in the store, so a rerun trains only the missing ones."""


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


def check_picklable(name: str, value: Any) -> None:
    """Raise a `ConfigError` naming ``name`` when ``value`` cannot be sent to Ray workers.

    Module-level functions and classes are sent by reference (workers import them);
    closures and lambdas by value, with everything they capture.
    """
    _require_ray()
    from ray import cloudpickle

    try:
        cloudpickle.dumps(value)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ConfigError(
            f"The {name} cannot be sent to Ray workers: {type(exc).__name__}: {exc}. HINT: "
            "use a module-level function or class (or a functools.partial of one) whose "
            "arguments pickle; a closure over an open file, a lock, a Trainer or a CUDA "
            "tensor cannot. The 'sequential' and 'batched' backends need no pickling."
        ) from None


# Memory: how many models one task trains at once.


def training_bytes_per_model(factory: ModelFactory, inputs: torch.Tensor, recipe: Recipe) -> int:
    """Estimated memory one model adds to a batched ensemble's training, in bytes.

    Parameters four times (the model, the ensemble's copy, its gradient and room for
    the step) plus the optimizer's state (Adam: two moments, SGD with momentum: one),
    frozen parameters and buffers twice, the activations of one batch three times (the
    forward's saved tensors, their gradients and vmap's intermediates) and the batch.
    The activations are measured on two records and scaled to the batch size.
    """
    model = init_model(factory, 0)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    frozen += sum(b.numel() * b.element_size() for b in model.buffers())
    states = (1 if recipe.momentum else 0) if recipe.optimizer is Optimizer.SGD else 2
    rows = min(2, recipe.batch_size, len(inputs))
    activations = 0

    def count(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal activations
        outputs = output if isinstance(output, tuple | list) else (output,)
        for tensor in outputs:
            if isinstance(tensor, torch.Tensor):
                activations += tensor.numel() * tensor.element_size()

    leaves = [m for m in model.modules() if not list(m.children())] or [model]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.train()
            model(inputs[:rows].to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    scale = recipe.batch_size / rows
    batch = inputs[:1].numel() * inputs.element_size() * recipe.batch_size
    return int(trainable * (4 + states) + 2 * frozen + 3 * activations * scale + batch)


def auto_models_per_task(*, budget: int, fixed: int, per_model: int, cap: int) -> int:
    """How many models one task trains at once: what the budget holds after the fixed
    cost, at least 1 and at most ``cap``.

    >>> auto_models_per_task(budget=8 * 2**30, fixed=2**30, per_model=2**20, cap=16)
    16
    >>> auto_models_per_task(budget=2**30, fixed=2**29, per_model=2**27, cap=16)
    4
    >>> auto_models_per_task(budget=2**20, fixed=2**30, per_model=2**27, cap=16)
    1
    """
    room = max(budget - fixed, 0)
    return max(1, min(cap, room // max(per_model, 1)))


def _task_budget(ray: Any, options: RayOptions, probe: Mapping[str, Any]) -> tuple[int, str]:
    """Bytes one task may use, and where the figure comes from."""
    if options.num_gpus > 0 and probe.get("gpu_free") is not None:
        share = min(options.num_gpus, 1.0)
        return int(probe["gpu_free"] * share), f"{share:g} of the worker GPU's free memory"
    if options.memory is not None:
        return options.memory, "the task's memory request"
    shares = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if not node.get("Alive") or resources.get("CPU", 0) < options.num_cpus:
            continue
        tasks = max(1.0, resources.get("CPU", 1.0) / max(options.num_cpus, 1e-9))
        shares.append(int(resources.get("memory", 0) / tasks))
    if not shares:
        return WORKER_BASE_BYTES, "no node reports its memory"
    return min(shares), "the smallest node's memory per task slot"


def _check_feasible(ray: Any, options: RayOptions) -> None:
    """Refuse a resource request no node of the cluster can meet (it would wait forever)."""
    wanted = {"CPU": options.num_cpus, "GPU": options.num_gpus, "memory": options.memory or 0}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0.0) >= v for k, v in wanted.items() if v) for node in nodes):
        return
    offered = [{k: node.get(k, 0) for k in ("CPU", "GPU", "memory")} for node in nodes]
    raise ConfigError(
        f"No node of the Ray cluster can run a task that asks for num_cpus="
        f"{options.num_cpus:g}, num_gpus={options.num_gpus:g}, memory={options.memory}: the "
        f"nodes offer {offered}. HINT: lower the request in the 'ray' section, or add (or "
        "let the autoscaler start) a node of that shape before the audit."
    )


# What runs on the workers.


@dataclass(frozen=True)
class _Shared:
    """Everything every task needs, put into the object store once."""

    factory: ModelFactory
    inputs: torch.Tensor
    labels: torch.Tensor
    recipe: Recipe
    task: Task
    augmentations: tuple[Augmentation, ...]
    train_fn: TrainFunction | None


class _OnDevice:
    """``factory()`` moved to ``device`` (the same initial weights: built, then moved)."""

    def __init__(self, factory: ModelFactory, device: str) -> None:
        self.factory, self.device = factory, device

    def __call__(self) -> nn.Module:
        return self.factory().to(self.device)


def _device(num_gpus: float) -> str:
    if num_gpus <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise InputError(
            f"A Ray task asked for num_gpus={num_gpus:g} but torch on the worker sees no "
            "CUDA device. HINT: install a CUDA build of torch on the GPU nodes."
        )
    return "cuda"


def _probe(shared: _Shared, num_gpus: float) -> dict[str, Any]:
    """Runs once on a worker before training: the factory loads and builds a model
    there; returns the worker's versions and free GPU memory."""
    import privacy_gate

    device = _device(num_gpus)
    init_model(shared.factory, 0)
    gpu_free = int(torch.cuda.mem_get_info()[0]) if device == "cuda" else None
    return {
        "torch": torch.__version__,
        "privacy_gate": privacy_gate.__version__,
        "gpu_free": gpu_free,
    }


def _train_group(
    shared: _Shared,
    models: Sequence[int],
    subsets: Sequence[NDArray[np.intp]],
    seeds: Sequence[int],
    batched: bool,
    threads: int,
    num_gpus: float,
) -> tuple[list[NDArray[np.float64]], str | None]:
    """One task: train the group's models, return their scores ``(n_records,)`` each
    (and why batching was given up, when it was). Pure in its arguments: a re-run
    returns the same scores."""
    torch.set_num_threads(threads)
    subsets = [np.array(subset) for subset in subsets]  # writable (Ray's are read-only)

    def one_at_a_time(
        factory: Any, inputs: torch.Tensor, labels: torch.Tensor
    ) -> list[NDArray[np.float64]]:
        return [
            train_and_score(
                factory,
                inputs,
                labels,
                subset,
                shared.recipe,
                seed,
                f"reference model {k}",
                shared.task,
                shared.augmentations,
                train_fn=shared.train_fn,
            )
            for k, subset, seed in zip(models, subsets, seeds, strict=True)
        ]

    if shared.train_fn is not None:  # the caller's loop places the model itself
        return one_at_a_time(shared.factory, shared.inputs, shared.labels), None
    device = _device(num_gpus)
    factory = shared.factory if device == "cpu" else _OnDevice(shared.factory, device)
    inputs, labels = shared.inputs.to(device), shared.labels.to(device)
    reason = None
    if batched:
        from privacy_gate.training.batched import BatchingUnsupported, train_batched

        try:
            trained = train_batched(factory, inputs, labels, subsets, shared.recipe, seeds=seeds)
            return [
                score_model(m, inputs, labels, shared.task, augmentations=shared.augmentations)
                for m in trained
            ], None
        except BatchingUnsupported as exc:  # as the local backend: one at a time instead
            reason = exc.reason
    return one_at_a_time(factory, inputs, labels), reason


# The driver.


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """The ``ray`` module, connected: to the running connection when there is one, else
    to ``address`` / ``RAY_ADDRESS`` / a new local instance (shut down at the end)."""
    ray = _require_ray()
    if ray.is_initialized():
        if options.address is not None:
            _LOG.info("Ray is already initialised in this process; 'address' is not used.")
        yield ray
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    settings: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address == "local":
        settings["include_dashboard"] = False
    try:
        ray.init(**settings)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        raise InputError(
            f"Cannot connect to the Ray cluster at {address!r}: {type(exc).__name__}: {exc}. "
            "HINT: check 'address' in the ray section or RAY_ADDRESS (`ray status` on the "
            "head node prints it); leave both unset for a local Ray instance."
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _root_cause(error: BaseException) -> tuple[BaseException, bool]:
    """The exception inside Ray's wrappers (a task's own error, or what failed to load),
    and whether Ray failed to load the task's arguments (a system error on the way)."""
    loading = False
    for _ in range(4):
        loading = loading or type(error).__name__ == "RaySystemError"
        inner = getattr(error, "cause", None) or getattr(error, "client_exc", None)
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error, loading


def _failure_message(error: BaseException, options: RayOptions) -> tuple[str, str]:
    """What went wrong in a task, and a ``HINT:`` sentence (empty when there is none)."""
    cause, loading = _root_cause(error)
    if loading or isinstance(cause, ModuleNotFoundError):
        return (
            "The Ray workers cannot load the model factory, train_fn, data or "
            f"augmentations: {type(cause).__name__}: {cause}.",
            "HINT: workers must import every module these come from (and privacy_gate): "
            "install your package on the cluster's image, or ship the code with the tasks, "
            "e.g. ray: {runtime_env: {working_dir: .}} in audit.yaml or "
            "RayOptions(runtime_env={'working_dir': '.'}).",
        )
    kind = type(error).__name__
    if kind in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError"):
        return (
            f"{kind}: the task's worker died {options.max_retries + 1} time(s).",
            "HINT: out of memory? Ask for more (ray: memory) or train fewer models per "
            "task (ray: models_per_task); preempted nodes: raise ray: max_retries.",
        )
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}.", ""


def train_on_ray(
    factory: ModelFactory,
    data: AuditData,
    plan: TrainingPlan,
    recipe: Recipe,
    store: ScoreStore,
    *,
    options: RayOptions | None = None,
    group_size: int = 16,
    augmentations: Sequence[Augmentation] = (),
    train_fn: TrainFunction | None = None,
) -> tuple[NDArray[np.float64], dict[str, Any]]:
    """Train (or resume) every reference model as Ray tasks; scores ``(K, N)`` and
    provenance, as `train_reference_models` returns them.

    Each task trains one model with ``train_fn`` when it is given; otherwise a fixed
    group of ``models_per_task`` models as one batched ensemble when the model allows,
    else one model with the recipe's loop.

    Raises:
        RayTrainingFailed: tasks failed after their retries (finished models are kept).
        TrainingError: a model could not be trained (e.g. its loss became NaN).
        ConfigError: what the tasks need cannot be sent to the workers, the workers
            cannot import it, or no node can meet the resource request.
    """
    options = options or RayOptions()
    names = [reference_name(k) for k in range(plan.n_models)]
    todo = [k for k, name in enumerate(names) if not store.has(name)]
    reason: str | None = None
    batched = train_fn is None
    if batched:
        from privacy_gate.training.batched import batching_problem

        reason = batching_problem(init_model(factory, 0))
        if recipe.dp is not None:
            reason = Fallback.DP_SGD.value
        if reason is not None:
            _LOG.warning("Training reference models one per Ray task: %s", reason)
            batched = False
    details: dict[str, Any] = {"models_per_task": None, "tasks": 0, **options.provenance()}
    started = time.perf_counter()
    with Progress(plan.n_models, initial=plan.n_models - len(todo)) as progress:
        if todo:
            details, reason = _run_tasks(
                factory,
                data,
                plan,
                recipe,
                store,
                progress,
                todo,
                options=options,
                batched=batched,
                group_size=group_size,
                augmentations=augmentations,
                train_fn=train_fn,
                reason=reason,
            )
    scores = np.stack([store.load(name) for name in names])  # type: ignore[misc]
    return scores, {
        "backend": "ray",
        "fallback_reason": reason,
        "trained_now": len(todo),
        "resumed": plan.n_models - len(todo),
        "training_seconds": round(time.perf_counter() - started, 3),
        "ray": details,
    }


def _run_tasks(
    factory: ModelFactory,
    data: AuditData,
    plan: TrainingPlan,
    recipe: Recipe,
    store: ScoreStore,
    progress: Progress,
    todo: list[int],
    *,
    options: RayOptions,
    batched: bool,
    group_size: int,
    augmentations: Sequence[Augmentation],
    train_fn: TrainFunction | None,
    reason: str | None,
) -> tuple[dict[str, Any], str | None]:
    for name, value in (
        ("model factory", factory),
        ("train_fn", train_fn),
        ("augmentations", tuple(augmentations)),
    ):
        check_picklable(name, value)
    inputs, labels = data.pool()
    shared = _Shared(factory, inputs, labels, recipe, data.task, tuple(augmentations), train_fn)
    with ray_session(options) as ray:
        _check_feasible(ray, options)
        task_options = options.task_options()
        shared_ref = ray.put(shared)
        try:
            probe = ray.get(
                ray.remote(_probe).options(**task_options).remote(shared_ref, options.num_gpus)
            )
        except ray.exceptions.RayError as exc:
            cause, _ = _root_cause(exc)
            if isinstance(cause, PrivacyGateError):
                raise cause from None
            raise ConfigError(" ".join(_failure_message(exc, options))) from None
        if probe["torch"] != torch.__version__:
            _LOG.warning(
                "The Ray workers run torch %s, this process %s: scores may differ "
                "slightly from a local audit.",
                probe["torch"],
                torch.__version__,
            )
        size = 1
        if batched and options.models_per_task == "auto":
            budget, source = _task_budget(ray, options, probe)
            # the task's copy of the pool (on its device), and on CPU the worker itself
            fixed = inputs.numel() * inputs.element_size()
            fixed += WORKER_BASE_BYTES if options.num_gpus <= 0 else 0
            per_model = training_bytes_per_model(factory, inputs, recipe)
            size = auto_models_per_task(
                budget=budget, fixed=fixed, per_model=per_model, cap=group_size
            )
            _LOG.info(
                "Ray: %d models per task (%.0f MiB from %s, %.1f MiB per model).",
                size,
                budget / 2**20,
                source,
                per_model / 2**20,
            )
        elif batched:
            size = int(options.models_per_task)
        missing = set(todo)
        groups = [
            list(range(start, min(start + size, plan.n_models)))
            for start in range(0, plan.n_models, size)
        ]
        groups = [g for g in groups if missing.intersection(g)]
        remote = ray.remote(_train_group).options(**task_options)
        threads = max(1, int(options.num_cpus))
        pending = {
            remote.remote(
                shared_ref,
                tuple(group),
                [plan.subset(k) for k in group],
                [plan.seeds[k] for k in group],
                batched,
                threads,
                options.num_gpus,
            ): group
            for group in groups
        }
        failures: list[tuple[list[int], BaseException]] = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    group = pending.pop(ref)
                    try:
                        scores, task_reason = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        _LOG.error(
                            "Ray task for reference models %s failed: %s",
                            group,
                            " ".join(_failure_message(exc, options)),
                        )
                        failures.append((group, exc))
                        continue
                    for k, values in zip(group, scores, strict=True):
                        store.save(reference_name(k), values)
                    progress.update(len(missing.intersection(group)))
                    reason = reason or task_reason
        finally:
            for ref in pending:  # interrupted: nothing more is trained for this audit
                ray.cancel(ref, force=True)
    if failures:
        _raise_failures(failures, options, store, plan.n_models)
    return {"models_per_task": size, "tasks": len(groups), **options.provenance()}, reason


def _raise_failures(
    failures: list[tuple[list[int], BaseException]],
    options: RayOptions,
    store: ScoreStore,
    n_models: int,
) -> None:
    models = sorted(k for group, _ in failures for k in group)
    finished = sum(store.has(reference_name(k)) for k in range(n_models))
    kept = (
        f"{finished} of {n_models} reference models are finished and kept in {store.path}; "
        "a rerun trains only the missing ones."
    )
    first = failures[0][1]
    cause, _ = _root_cause(first)
    if isinstance(cause, PrivacyGateError):  # the model's own error, as a local run raises it
        try:
            same_kind = type(cause)(f"{cause} ({kept})")
        except TypeError:  # an exception class with another signature
            raise cause from None
        raise same_kind from None
    message, hint = _failure_message(first, options)
    raise RayTrainingFailed(
        f"{len(failures)} Ray task(s) failed after their retries (reference models "
        f"{models}): {message} {kept} {hint}".rstrip()
    )
