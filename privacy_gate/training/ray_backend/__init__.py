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

from privacy_gate.training.ray_backend.driver import (
    RayBackend,
    RayTrainingFailed,
    ray_session,
    train_on_ray,
)
from privacy_gate.training.ray_backend.memory import auto_models_per_task, training_bytes_per_model
from privacy_gate.training.ray_backend.options import RayOptions, parse_memory, parse_ray_options
from privacy_gate.training.ray_backend.task import check_picklable

__all__ = [
    "RayBackend",
    "RayOptions",
    "RayTrainingFailed",
    "auto_models_per_task",
    "check_picklable",
    "parse_memory",
    "parse_ray_options",
    "ray_session",
    "train_on_ray",
    "training_bytes_per_model",
]
