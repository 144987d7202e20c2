"""The Hugging Face ``Trainer`` integration (``pip install 'privacy-gate[transformers]'``).

``Trainer(..., callbacks=[PrivacyAuditCallback(holdout=..., factory=...)])`` audits the
trained model at the end of ``train()`` and gates its release; docs/how-to/
hugging-face-trainer.md. ``transformers`` is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from privacy_gate.errors import PrivacyGateFailed

if TYPE_CHECKING:
    from privacy_gate.integrations.transformers._callback import PrivacyAuditCallback

__all__ = ["PrivacyAuditCallback", "PrivacyGateFailed"]


def __getattr__(name: str) -> Any:
    if name != "PrivacyAuditCallback":
        raise AttributeError(
            f"module 'privacy_gate.integrations.transformers' has no attribute {name!r}"
        )
    try:
        from privacy_gate.integrations.transformers._callback import PrivacyAuditCallback
    except ModuleNotFoundError as exc:
        if exc.name not in ("transformers", "accelerate", "torch"):
            raise
        raise ImportError(
            f"PrivacyAuditCallback needs the {exc.name} package. HINT: pip install "
            "'privacy-gate[transformers]'."
        ) from exc
    return PrivacyAuditCallback
