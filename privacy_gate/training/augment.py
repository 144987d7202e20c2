"""Test-time augmentations by name (audit.yaml's ``augmentations``): each record's score
is the mean over the identity and every listed view, for the candidate and every
reference model alike (image models are often released with flip averaging)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from privacy_gate.errors import ConfigError, invalid_value

__all__ = ["AUGMENTATIONS", "parse_augmentations"]


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[-1])


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[-2])


AUGMENTATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": _hflip,  # mirror the last axis (width; time for 1D signals)
    "vflip": _vflip,  # mirror the second-to-last axis (height)
}


def parse_augmentations(value: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
    """``[hflip, vflip]`` -> the augmentation functions, in order.

    >>> len(parse_augmentations(["hflip"]))
    1
    """
    if value is None:
        return ()
    names: Sequence[Any] = value if isinstance(value, list) else [value]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if not isinstance(value, list) or unknown or len(set(names)) != len(names):
        raise ConfigError(
            invalid_value(
                "augmentations",
                "audit config",
                f"a list of distinct names from {sorted(AUGMENTATIONS)}",
                value,
            )
        )
    return tuple(AUGMENTATIONS[n] for n in names)
