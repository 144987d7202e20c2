"""Every access of the callbacks to Lightning's and Opacus' private or version-bound
internals, in one place.

Each function names what it reaches and fails loudly (an `InputError` with a HINT)
when an upgrade removes it; `tests/integration/test_compat.py` checks each against the
installed versions, so an upgrade that breaks one fails there first.
"""

from __future__ import annotations

from typing import Any

from privacy_gate.errors import InputError

__all__ = ["release_grad_sample_module", "train_data_source"]


def train_data_source(trainer: Any, owner: str) -> Any:
    """``trainer.fit_loop._data_source`` (Lightning 2.x, private): the object whose
    ``dataloader()`` builds the train DataLoader. Lightning has no public hook that
    replaces the train loader before the fit loop takes it."""
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    if source is None or not callable(getattr(source, "dataloader", None)):
        raise InputError(
            f"{owner} cannot reach the train DataLoader of this Lightning version "
            "(trainer.fit_loop._data_source.dataloader). HINT: train with Opacus' "
            "PrivacyEngine directly, or pin lightning 2.x."
        )
    return source


def release_grad_sample_module(module: Any) -> None:
    """Remove Opacus' hooks and per-sample gradients from a ``GradSampleModule``:
    ``cleanup()`` (Opacus 1.5+, what the private ``_close()`` calls), else the two
    public steps it consists of."""
    cleanup = getattr(module, "cleanup", None)
    if callable(cleanup):
        cleanup()
        return
    module.remove_hooks()
    module.del_grad_sample()
