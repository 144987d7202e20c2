"""Private Hugging Face access, in one place.

A ``TrainerCallback``'s hooks receive the arguments, the state and the model, never the
Trainer, but the audit needs it (``model_init``, the datasets, the collator, the class of
Trainer the reference models train with). `calling_trainer` finds the Trainer whose
callback handler is calling a hook: the ``self`` of one of the calling frames, accepted
only when that object's ``callback_handler`` holds this very callback (identity).
``PrivacyAuditCallback.set_trainer`` sets it explicitly instead, as
``transformers``' own ``JITCheckpointCallback.set_trainer`` does.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["calling_trainer"]

_MAX_FRAMES = 16


def calling_trainer(callback: object) -> Any | None:
    """The Trainer whose callback handler calls ``callback`` now, or None."""
    frame = inspect.currentframe()
    try:
        for _ in range(_MAX_FRAMES):
            if frame is None:
                return None
            frame = frame.f_back
            owner = None if frame is None else frame.f_locals.get("self")
            handler = getattr(owner, "callback_handler", None)
            callbacks = getattr(handler, "callbacks", None) or []
            if any(registered is callback for registered in callbacks):
                return owner
        return None
    finally:
        del frame
