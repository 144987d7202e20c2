"""Suite-wide settings."""

from __future__ import annotations

import sys
from collections.abc import Iterator
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


_MLFLOW_URI_GLOBALS = (
    ("mlflow.tracking._tracking_service.utils", "_tracking_uri"),
    ("mlflow.tracking._model_registry.utils", "_registry_uri"),
)


@pytest.fixture(autouse=True)
def _mlflow_process_wide_uris() -> Iterator[None]:
    """Put MLflow's process-wide tracking and registry URIs back as they were (unset, when
    MLflow was not loaded yet) after each test. A test that sets one and restores it with
    ``set_tracking_uri(get_tracking_uri())`` leaves it *set*, and Hugging Face's
    MLflowCallback then ignores ``MLFLOW_TRACKING_URI`` in every later test."""
    saved = [
        getattr(sys.modules[name], attribute, None) if name in sys.modules else None
        for name, attribute in _MLFLOW_URI_GLOBALS
    ]
    yield
    for (name, attribute), value in zip(_MLFLOW_URI_GLOBALS, saved, strict=True):
        if name in sys.modules:
            setattr(sys.modules[name], attribute, value)
