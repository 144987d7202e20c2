"""Lightning callbacks.

``from lightning_callbacks import PrivacyAuditCallback`` gives the callback for the
``pytorch_lightning`` namespace (the ``pytorch-lightning`` package); for
``lightning.pytorch`` import it from `lightning_callbacks.lightning`. A Trainer accepts
only callbacks of its own namespace. Lightning is imported lazily, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_callbacks._audit_core import PrivacyGateFailed

if TYPE_CHECKING:
    from lightning_callbacks.pytorch_lightning import PrivacyAuditCallback

__all__ = ["PrivacyAuditCallback", "PrivacyGateFailed"]


def __getattr__(name: str) -> Any:
    if name != "PrivacyAuditCallback":
        raise AttributeError(f"module 'lightning_callbacks' has no attribute {name!r}")
    try:
        from lightning_callbacks.pytorch_lightning import PrivacyAuditCallback
    except ModuleNotFoundError as exc:
        if exc.name != "pytorch_lightning":
            raise
        raise ImportError(
            "PrivacyAuditCallback needs the pytorch-lightning package. HINT: pip install "
            "'privacy-gate[lightning]', or import it from lightning_callbacks.lightning "
            "when you train with lightning.pytorch."
        ) from exc
    return PrivacyAuditCallback
