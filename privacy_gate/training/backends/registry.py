"""The training backends by name, each one `BackendSpec`: the options it takes (parsed by
the backend itself), how it is built, what it supports, and how a Lightning fit uses it.
audit.yaml, `run_audit`, the Lightning callback and the MLflow evaluator pass a backend's
name and options through this registry and name no backend themselves. A new backend is
one `register_backend` call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from privacy_gate.errors import ConfigError, InputError, invalid_value
from privacy_gate.training.reference import (
    ReferenceJob,
    TrainingBackend,
    TrainingRun,
    reference_name,
)

__all__ = [
    "BACKENDS",
    "BackendSpec",
    "FitPlan",
    "Supports",
    "backend_spec",
    "check_supported",
    "make_backend",
    "merge_rounds",
    "parse_backend_options",
    "register_backend",
    "train_reference_models",
    "unregister_backend",
]

OptionParser = Callable[[Any, str], Any]
"""``parse(value, owner) -> value``: validates one option, naming ``owner`` in its error."""


@dataclass(frozen=True)
class FitPlan:
    """How a Lightning fit's reference models train: on which backend, and whether each
    goes through the caller's own loop (``train_fn``: one Trainer per model)."""

    backend: str
    train_fn: bool
    note: str | None = None
    """Why the fit trains otherwise than asked, for the caller's log (None: as asked)."""


@dataclass(frozen=True)
class Supports:
    """What a backend can train, checked before any model trains (`check_supported`).

    Attributes:
        dp_sgd: recipes that train with DP-SGD.
        adaptive: ``reference_models: auto`` (training in rounds, resumed per look).
        devices: the device types it trains on in this process; empty when it places
            its models itself (Ray tasks), so an audit's ``device`` does not apply.
    """

    dp_sgd: bool = True
    adaptive: bool = True
    devices: frozenset[str] = frozenset({"cpu", "cuda"})


class BackendSpec:
    """One training backend. Subclasses set ``name`` and ``options`` and implement
    `build`; the defaults describe a backend that trains in this process.

    Attributes:
        name: audit.yaml's ``backend:`` value and the callback's ``backend=``.
        options: option name -> its parser; audit.yaml takes them as top-level keys, the
            callback and `make_backend` as keywords.
        supports: what it can train (DP-SGD, adaptive rounds, devices).
    """

    name: str = ""
    options: ClassVar[Mapping[str, OptionParser]] = {}
    supports: ClassVar[Supports] = Supports()

    def build(self, **options: Any) -> TrainingBackend:
        """The backend, from its parsed options."""
        raise NotImplementedError

    def check_factory(self, factory: Callable[[], Any], what: str) -> None:
        """Before training: whether this backend can use the model factory (one that
        travels to other processes must pickle). Default: any factory."""

    def unavailable(self) -> str | None:
        """Why this backend cannot run here (a missing package), with the fix; None when
        it can."""
        return None

    def fit_plan(self, unbatchable: str | None, owner: str) -> FitPlan:
        """How a Lightning fit trains on this backend, given why its recipe cannot be
        batched (None: it can). Default: one model at a time through the fit's loop."""
        return FitPlan(self.name, True)

    def round_multiple(self, backend: TrainingBackend) -> int:
        """The number of models an adaptive round must be a multiple of on ``backend``
        (a batched group: a look must not split one). Default: 1."""
        return 1

    def merge_rounds(self, before: TrainingRun, after: TrainingRun) -> TrainingRun:
        """Two rounds of an adaptive audit as one: counts and seconds add up, the first
        fallback reason and the first round's details stay."""
        return replace(
            before,
            trained_now=before.trained_now + after.trained_now,
            training_seconds=round(before.training_seconds + after.training_seconds, 3),
            fallback_reason=before.fallback_reason or after.fallback_reason,
        )


BACKENDS: dict[str, BackendSpec] = {}
"""Every backend, by name."""


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a backend (its name must be new and an identifier)."""
    if not spec.name.isidentifier() or spec.name in BACKENDS:
        raise ValueError(f"A backend needs a new identifier as its name; got {spec.name!r}.")
    BACKENDS[spec.name] = spec
    return spec


def unregister_backend(name: str) -> None:
    """Remove a backend (for tests that register a throwaway one)."""
    del BACKENDS[name]


def backend_spec(name: Any, owner: str, error: type[ValueError] = InputError) -> BackendSpec:
    """The registered backend ``name``, or an error that lists the registered ones."""
    value = getattr(name, "value", name)  # an Enum member of an older caller
    if not isinstance(value, str) or value not in BACKENDS:
        raise error(
            invalid_value("backend", owner, f"one of {sorted(BACKENDS)}", name,
                          "'auto' trains batched ensembles when the model allows it")
        )  # fmt: skip
    spec = BACKENDS[value]
    reason = spec.unavailable()
    if reason is not None:
        raise error(invalid_value("backend", owner, "a backend that can run here", value, reason))
    return spec


def parse_backend_options(
    name: str, given: object, owner: str, error: type[ValueError] = InputError
) -> dict[str, Any]:
    """The options given for backend ``name`` (``backend_options``: a mapping from option
    name to value, or None), each parsed by the backend; an option left None takes the
    backend's default. An option it does not take is an error (it would silently do
    nothing), naming the backends that take it."""
    spec = backend_spec(name, owner, error)
    if given is None:
        given = {}
    if not isinstance(given, Mapping) or not all(isinstance(key, str) for key in given):
        raise error(
            invalid_value("backend_options", owner, "a mapping from option name to value, "
                          "or None", given)
        )  # fmt: skip
    parsed: dict[str, Any] = {}
    for option, value in given.items():
        if value is None:
            continue
        if option not in spec.options:
            takers = sorted(n for n, s in BACKENDS.items() if option in s.options)
            hint = (
                f"it applies to backend {' or '.join(map(repr, takers))}; drop it or change "
                "the backend"
                if takers
                else f"the {name!r} backend takes {sorted(spec.options) or 'no options'}"
            )
            raise error(
                f"The option {option!r} does not apply to the {name!r} backend of {owner}. "
                f"HINT: {hint}."
            )
        try:
            parsed[option] = spec.options[option](value, owner)
        except (ConfigError, InputError) as exc:
            raise error(str(exc)) from None
    return parsed


def make_backend(backend: TrainingBackend | str = "auto", **options: Any) -> TrainingBackend:
    """A `TrainingBackend` from a name and its options (audit.yaml, the Lightning
    callback, the evaluator), or the backend itself, whose options travel with it."""
    if not isinstance(backend, str) and not hasattr(backend, "value"):
        if options:
            raise InputError(
                "Options were given beside a backend object; they travel with the backend. "
                "HINT: e.g. SequentialBackend(workers=4) or RayBackend(RayOptions(...))."
            )
        return backend
    spec = backend_spec(backend, "the audit")
    return spec.build(**parse_backend_options(spec.name, options, "the audit"))


def check_supported(
    backend: TrainingBackend,
    *,
    dp_sgd: bool,
    rounds: tuple[int, ...] | None,
    device_type: str,
    owner: str,
) -> None:
    """Refuse, before any model trains, what ``backend`` cannot train: a DP-SGD recipe,
    adaptive ``rounds`` (the K of each look; None: a fixed K) that it cannot resume or
    that split its groups, or a device type it does not train on."""
    spec = BACKENDS.get(backend.name, BackendSpec())
    supports, name = spec.supports, backend.name
    if dp_sgd and not supports.dp_sgd:
        raise InputError(
            invalid_value("backend", owner, "a backend that trains with DP-SGD", name,
                          "use backend 'auto' or 'sequential', or a recipe without 'dp'")
        )  # fmt: skip
    if rounds is not None:
        if not supports.adaptive:
            raise InputError(
                invalid_value("backend", owner, "a backend that trains in rounds", name,
                              "use a fixed reference_models K, or backend 'auto'")
            )  # fmt: skip
        group = spec.round_multiple(backend)
        if group > 1 and any(k % group for k in rounds):
            raise InputError(
                f"The adaptive audit's looks (K = {list(rounds)}) must be multiples of the "
                f"{name!r} backend's group size ({group}): a look would split a group. HINT: "
                f"use round_size {group} (the default) with a max_reference_models that is "
                "a multiple of it, or backend 'sequential'."
            )
    if supports.devices and device_type not in supports.devices:
        raise InputError(
            invalid_value("device", owner, f"one of {sorted(supports.devices)} for backend "
                          f"{name!r}", device_type, "choose another device or backend")
        )  # fmt: skip


def merge_rounds(before: TrainingRun | None, after: TrainingRun) -> TrainingRun:
    """All rounds so far as one run, merged by the backend that trained them."""
    if before is None:
        return after
    return BACKENDS.get(after.backend, BackendSpec()).merge_rounds(before, after)


def train_reference_models(
    job: ReferenceJob, backend: TrainingBackend | str = "auto"
) -> tuple[NDArray[np.float64], TrainingRun]:
    """Train (or resume) every reference model of ``job``; scores ``(K, N)`` and what the
    training did."""
    run = make_backend(backend).train(job)
    names = [reference_name(k) for k in range(job.plan.n_models)]
    scores = np.stack([job.store.load(name) for name in names])  # type: ignore[misc]
    return scores, run
