"""The training backends behind one protocol (`reference.TrainingBackend`), and the
registry (`BACKENDS`) that turns a backend's name and options into one:

- ``auto`` (`AutoBackend`): batched when the model and recipe allow it, else sequential;
- ``batched`` (`BatchedBackend`): fixed groups of models as batched ensembles;
- ``sequential`` (`SequentialBackend`): one model at a time, optionally in processes;
- ``ray`` (`privacy_gate.training.ray_backend.RayBackend`): the same work as Ray tasks.

A new backend is a `BackendSpec` and one `register_backend` call.
"""

from __future__ import annotations

from privacy_gate.training.backends import local, ray
from privacy_gate.training.backends.local import (
    AutoBackend,
    BatchedBackend,
    SequentialBackend,
    choose_backend,
)
from privacy_gate.training.backends.registry import (
    BACKENDS,
    BackendSpec,
    FitPlan,
    Supports,
    backend_spec,
    check_supported,
    make_backend,
    merge_rounds,
    parse_backend_options,
    register_backend,
    train_reference_models,
    unregister_backend,
)

__all__ = [
    "BACKENDS",
    "AutoBackend",
    "BackendSpec",
    "BatchedBackend",
    "FitPlan",
    "SequentialBackend",
    "Supports",
    "backend_spec",
    "check_supported",
    "choose_backend",
    "make_backend",
    "merge_rounds",
    "parse_backend_options",
    "register_backend",
    "train_reference_models",
    "unregister_backend",
]

for _spec in (*local.SPECS, ray.SPEC):
    register_backend(_spec)
