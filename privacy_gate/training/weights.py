"""The digest of a model's weights, so an audit names exactly the model it audited.

SHA-256 over the state_dict in sorted key order: each entry contributes its name, dtype,
shape and raw little-endian bytes. Promotion recomputes it from the registered model's
files and refuses a version whose weights changed after the audit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["weights_sha256"]


def weights_sha256(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a model's (or a state_dict's) tensors in a canonical order.

    >>> a = nn.Linear(2, 1)
    >>> weights_sha256(a) == weights_sha256(a.state_dict())
    True
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
