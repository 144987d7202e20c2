"""`PrivacyAuditCallback` for the ``pytorch_lightning`` namespace (``pip install
pytorch-lightning``). For ``lightning.pytorch`` use `lightning_callbacks.lightning`."""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning

from lightning_callbacks._audit_core import PrivacyGateFailed
from lightning_callbacks._callback import CALLBACK_DOC, PrivacyAuditBehaviour
from lightning_callbacks._dp import DPSGD_DOC, DPSGDBehaviour

__all__ = ["DPSGD", "PrivacyAuditCallback", "PrivacyGateFailed"]


class PrivacyAuditCallback(PrivacyAuditBehaviour, pytorch_lightning.Callback):
    __doc__ = CALLBACK_DOC

    trainer_class: ClassVar[Any] = pytorch_lightning.Trainer


class DPSGD(DPSGDBehaviour, pytorch_lightning.Callback):
    __doc__ = DPSGD_DOC
