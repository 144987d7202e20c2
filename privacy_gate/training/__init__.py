"""Reference-model training and scoring for PyTorch models (the ``torch`` extra).

This package is the edge where torch lives; the numerical core never imports it. The
names a user needs: `run_audit`, the `Recipe`, the pool (`AuditData`) and the backends.
"""

from __future__ import annotations

from privacy_gate.training.audit import run_audit
from privacy_gate.training.backends import (
    AutoBackend,
    BatchedBackend,
    SequentialBackend,
    make_backend,
)
from privacy_gate.training.data import AuditData
from privacy_gate.training.ray_backend import RayBackend, RayOptions
from privacy_gate.training.recipe import DPSettings, Recipe

__all__ = [
    "AuditData",
    "AutoBackend",
    "BatchedBackend",
    "DPSettings",
    "RayBackend",
    "RayOptions",
    "Recipe",
    "SequentialBackend",
    "make_backend",
    "run_audit",
]
