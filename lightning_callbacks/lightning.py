"""`PrivacyAuditCallback` for the ``lightning.pytorch`` namespace (``pip install
lightning``). For ``pytorch_lightning`` use `lightning_callbacks.pytorch_lightning`."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch

from lightning_callbacks._audit_core import PrivacyGateFailed
from lightning_callbacks._callback import CALLBACK_DOC, PrivacyAuditBehaviour
from lightning_callbacks._dp import DPSGD_DOC, DPSGDBehaviour

__all__ = ["DPSGD", "PrivacyAuditCallback", "PrivacyGateFailed"]


class PrivacyAuditCallback(PrivacyAuditBehaviour, lightning.pytorch.Callback):
    __doc__ = CALLBACK_DOC

    trainer_class: ClassVar[Any] = lightning.pytorch.Trainer


class DPSGD(DPSGDBehaviour, lightning.pytorch.Callback):
    __doc__ = DPSGD_DOC
