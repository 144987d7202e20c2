"""Lightning callbacks.

``from lightning_callbacks import PrivacyAuditCallback, DPSGD`` gives the callbacks for the
``pytorch_lightning`` namespace (the ``pytorch-lightning`` package); for
``lightning.pytorch`` import them from `lightning_callbacks.lightning`. A Trainer accepts
only callbacks of its own namespace. Lightning is imported lazily, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_callbacks._audit_core import PrivacyGateFailed

if TYPE_CHECKING:
    from lightning_callbacks.pytorch_lightning import DPSGD, PrivacyAuditCallback

__all__ = ["DPSGD", "PrivacyAuditCallback", "PrivacyGateFailed"]


def __getattr__(name: str) -> Any:
    if name not in ("PrivacyAuditCallback", "DPSGD"):
        raise AttributeError(f"module 'lightning_callbacks' has no attribute {name!r}")
    try:
        from lightning_callbacks import pytorch_lightning as namespace
    except ModuleNotFoundError as exc:
        if exc.name != "pytorch_lightning":
            raise
        raise ImportError(
            f"{name} needs the pytorch-lightning package. HINT: pip install "
            f"'privacy-gate[lightning]', or import it from lightning_callbacks.lightning "
            "when you train with lightning.pytorch."
        ) from exc
    return getattr(namespace, name)
