"""Reference-model training and scoring for PyTorch models (the ``torch`` extra).

This package is the edge where torch lives; the numerical core never imports it.
"""

from __future__ import annotations

from privacy_gate.training.recipe import Recipe

__all__ = ["Recipe"]
