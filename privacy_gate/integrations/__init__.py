"""Integrations with other training frameworks (edges: the numerical core never imports
them). `privacy_gate.integrations.transformers`: the Hugging Face ``Trainer`` callback
(the ``transformers`` extra)."""

from __future__ import annotations

__all__: list[str] = []
