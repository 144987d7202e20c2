"""`PrivacyAuditCallback` for the ``pytorch_lightning`` namespace (``pip install
pytorch-lightning``). For ``lightning.pytorch`` use `lightning_callbacks.lightning`."""

from __future__ import annotations

from typing import Any, ClassVar

import pytorch_lightning

from lightning_callbacks._audit_core import PrivacyGateFailed
from lightning_callbacks._callback import PrivacyAuditBehaviour

__all__ = ["PrivacyAuditCallback", "PrivacyGateFailed"]


class PrivacyAuditCallback(PrivacyAuditBehaviour, pytorch_lightning.Callback):
    """Audit the model ``Trainer.fit`` just trained; gate its release.

    After training (``on_train_end``: the final weights), trains reference models with
    the fit's own recipe on an audit pool of the train set (members) and a holdout,
    scores the trained model, writes the report to ``output_dir`` and puts the key
    figures into ``trainer.callback_metrics`` (``privacy_gate/patient_auc/max``,
    ``privacy_gate/patients_at_risk``, ``privacy_gate/aggregate_auc``,
    ``privacy_gate/noise_floor``, ``privacy_gate/passed``).

    Args:
        config: an ``AuditConfig`` or the path of a YAML policy (default: the packaged
            default policy, analysing the ``subgroups`` given here).
        holdout: non-member records, a Dataset or DataLoader of ``(input, label)``
            (default: the datamodule's test set, else its validation set with a warning).
        patient_ids: aligned with the pool (train records, then holdout records), or a
            callable ``(split, index) -> id`` with ``split`` "train" or "holdout".
        subgroups: column name -> values aligned with the pool, or such a callable.
        reference_models: K, even (default 64).
        backend: "auto" (batched when the recipe allows, else one Lightning Trainer per
            reference model), "batched" or "sequential".
        seed: seeds the plan and the reference models.
        on_fail: "raise" (`PrivacyGateFailed`), "warn", or "tag" (an MLflow tag once the
            MLflow adapter exists; a warning until then). An audit error always raises.
        output_dir: report directory (default ``<default_root_dir>/privacy_audit``).
        model_factory: builds an untrained module (default
            ``type(module)(**module.hparams)``).
        task: "multiclass" (default), "binary" or "multilabel"; forward returns logits.
        plots: also write report.md / report.html with plots.

    Example:
        >>> callback = PrivacyAuditCallback(reference_models=32, on_fail="warn")
        >>> callback.state_dict()
        {'audited': False, 'status': None, 'report_sha256': None}
    """

    trainer_class: ClassVar[Any] = pytorch_lightning.Trainer
