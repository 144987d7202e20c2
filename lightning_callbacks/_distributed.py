"""Multi-process fits (DDP): every rank trains its share of the reference models on its
own device, and the scores are gathered to rank zero, which scores, reports, logs, signs
and decides (`privacy_gate.training.shares`).

No collective is pending while a rank trains: each rank trains its whole share, then
joins one ``gather_object``. Shares differ by at most one batched group, so a rank waits
at most for one group of another; the verdict's broadcast then waits for rank zero's
scoring and report. Both waits count against the process group's timeout (Lightning's
default: 30 minutes); where one of them may be longer, pass
``DDPStrategy(timeout=datetime.timedelta(hours=...))``. A rank that fails sends its error
instead of scores, so every rank learns of it and none waits forever.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from lightning_callbacks._audit_core import fit_inputs
from lightning_callbacks._dp import find_dpsgd
from lightning_callbacks._settings import OWNER, AuditSettings
from privacy_gate.errors import ConfigError
from privacy_gate.training.shares import RankShare, train_share

__all__ = ["check_distributed", "train_and_gather"]


def check_distributed(trainer: Any, settings: AuditSettings) -> None:
    """Before training: what a multi-process fit's audit cannot do."""
    if trainer.world_size == 1:
        return
    if not isinstance(settings.reference_models, int):
        raise ConfigError(
            f"{OWNER} under multi-process training needs a fixed K: reference_models "
            f"{settings.reference_models!r} (an adaptive audit) would need the ranks again "
            "at every look. HINT: pass reference_models=<even K>, e.g. 64."
        )
    if find_dpsgd(trainer) is not None:
        raise ConfigError(
            f"{OWNER} does not audit DP-SGD fits under multi-process training (the DPSGD "
            "callback trains one process). HINT: train with DPSGD on one device, or audit "
            "after fit() with privacy_gate.training.run_audit."
        )
    if not dist.is_available():
        raise ConfigError(f"{OWNER} needs torch.distributed under multi-process training.")


def _gather_to_zero(value: RankShare | str) -> list[RankShare | str] | None:
    """Every rank's ``value`` on rank zero (None elsewhere): one collective."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised in a multi-process fit")
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def train_and_gather(
    trainer: Any,
    module: Any,
    settings: AuditSettings,
    trainer_class: Any,
    data: Any,
    averaging: list[Any] | None = None,
) -> tuple[list[RankShare] | None, Exception | None]:
    """Train this rank's share; on rank zero, every rank's share (by rank). The error is
    this rank's own, or on rank zero also the first other rank's (the audit cannot
    finish either way)."""
    rank = int(trainer.global_rank)
    error: Exception | None = None
    sent: RankShare | str
    k = settings.reference_models
    if not isinstance(k, int):  # check_distributed refused it before training
        raise ConfigError(f"{OWNER} under multi-process training needs a fixed K.")
    try:
        inputs = fit_inputs(trainer, module, settings, trainer_class, data, averaging)
        sent = train_share(
            inputs.factory,
            inputs.data,
            recipe=inputs.recipe,
            reference_models=k,
            backend=inputs.backend,
            seed=settings.seed,
            rank=rank,
            world_size=int(trainer.world_size),
            candidate=module,
            out_dir=inputs.out,
            cache_key=inputs.cache_key,
            device=inputs.device,
        )
    except Exception as exc:  # sent on, so that no rank waits for this one's scores
        error, sent = exc, f"rank {rank}: {type(exc).__name__}: {exc}"
    gathered = _gather_to_zero(sent)
    if gathered is None:
        return None, error
    failures = [value for value in gathered if isinstance(value, str)]
    if failures and error is None:
        error = RuntimeError(
            "The privacy audit's reference models failed on " + "; ".join(failures)
        )
    if error is not None:
        return None, error
    return [value for value in gathered if not isinstance(value, str)], None
