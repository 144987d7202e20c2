"""The model factory of the SUPPORT2 example: a small MLP with two output logits.

A template for your own factory: a module-level callable whose keyword arguments come
from ``model_args`` in the audit config, returning an untrained ``nn.Module`` that maps
the loader's features ``(N, n_features)`` to logits ``(N, n_classes)``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["N_FEATURES", "make_model"]

#: Width of ``examples.ehr.data.load_support2``'s features (``len(feature_names())``).
N_FEATURES = 78


def make_model(
    n_features: int = N_FEATURES, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.1
) -> nn.Module:
    """``Linear -> ReLU -> Dropout`` per hidden layer, then ``Linear(..., 2)`` (logits of
    survived / died, for cross-entropy)."""
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, 2))
    return nn.Sequential(*layers)
