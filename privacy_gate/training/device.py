"""Where reference models train: audit.yaml's and `run_audit`'s ``device``.

``auto`` takes the first CUDA device when torch sees one, else the CPU; ``cpu``,
``cuda`` and ``cuda:<i>`` are explicit. Asking for CUDA where there is none is an error
(exit 2), never a silent fallback: the user planned for that device's speed and memory.
"""

from __future__ import annotations

import re

import torch

from privacy_gate.errors import InputError

__all__ = ["AUTO", "resolve_device"]

AUTO = "auto"
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(value: str | torch.device | None, owner: str = "the audit") -> torch.device:
    """The torch device for ``value`` (``None`` means ``auto``).

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    text = AUTO if value is None else str(value)
    if not _PATTERN.match(text):
        raise InputError(
            f"The 'device' of {owner} must be auto, cpu, cuda or cuda:<index>. Got {value!r}. "
            "HINT: auto takes CUDA when it is available."
        )
    if text == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"The 'device' of {owner} is {text!r} but torch sees no CUDA device (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). HINT: use "
                "device: auto or cpu, or install a CUDA build of torch on a machine with a GPU."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InputError(
                f"The 'device' of {owner} is {text!r} but torch sees {count} CUDA device(s). "
                f"HINT: use cuda:0 .. cuda:{count - 1}."
            )
    return device
