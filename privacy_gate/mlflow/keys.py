"""MLflow-safe metric keys: `privacy_gate.metric_keys` (kept here for existing imports)."""

from __future__ import annotations

from privacy_gate.metric_keys import (
    KEY_PREFIX,
    MAX_KEY_LENGTH,
    escape_segment,
    is_shortened,
    join_key,
    metric_key,
    shorten_key,
    split_key,
    unescape_segment,
)

__all__ = [
    "KEY_PREFIX",
    "MAX_KEY_LENGTH",
    "escape_segment",
    "is_shortened",
    "join_key",
    "metric_key",
    "shorten_key",
    "split_key",
    "unescape_segment",
]
