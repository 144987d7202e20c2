"""The weights digest of a model as MLflow stored it (promotion recomputes it)."""

from __future__ import annotations

__all__ = ["logged_model_sha256"]


def logged_model_sha256(location: str) -> str:
    """Load a logged PyTorch model (``models:/name/version`` or a local copy) on the CPU
    and return `privacy_gate.training.weights.weights_sha256` of it."""
    import mlflow.pytorch

    from privacy_gate.training.weights import weights_sha256

    return weights_sha256(mlflow.pytorch.load_model(location, map_location="cpu"))
