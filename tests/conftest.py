"""Suite-wide settings."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _reference_model_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Audits without an out_dir cache finished reference models in the user cache
    directory; tests keep that in a temporary one (never the developer's ~/.cache)."""
    root = tmp_path_factory.getbasetemp() / "privacy-gate-cache"
    monkeypatch.setenv("PRIVACY_GATE_CACHE_DIR", str(root))
    return root
