"""Finished reference models' scores on disk, so an interrupted audit resumes.

Each finished model's scores are written atomically as soon as they exist. The folder is
keyed by a digest of everything that determines them (recipe, model, data, plan, seed),
so a changed recipe never reuses stale models.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

__all__ = ["ScoreStore", "digest_of", "folder_of", "load_weights", "weights_file"]


def digest_of(data: Any) -> str:
    """SHA-256 of canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ScoreStore:
    """Per-model score vectors ``(n_records,)`` under ``root/<key>/``."""

    def __init__(self, root: Path, key: dict[str, Any], n_records: int) -> None:
        self.key = digest_of(key)
        self.path = folder_of(root, self.key)
        self.n_records = n_records
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = self.path / "key.json"
        if not manifest.exists():
            _atomic_write(
                manifest, json.dumps(key, sort_keys=True, indent=2, default=str).encode("utf-8")
            )

    def _file(self, name: str) -> Path:
        return self.path / f"{name}.npy"

    def has(self, name: str) -> bool:
        """True when ``name``'s scores are stored complete and readable."""
        try:
            return self.load(name) is not None
        except (OSError, ValueError):
            return False

    def load(self, name: str) -> NDArray[np.float64] | None:
        file = self._file(name)
        if not file.exists():
            return None
        scores = np.load(file, allow_pickle=False)
        if scores.shape != (self.n_records,) or not np.isfinite(scores).all():
            return None
        return np.asarray(scores, dtype=np.float64)

    def save(self, name: str, scores: NDArray[np.float64]) -> None:
        """Write atomically: a crash leaves either the old state or the complete file."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(scores, dtype=np.float64))
        _atomic_write(self._file(name), buffer.getvalue())

    def save_text(self, name: str, text: str) -> None:
        """Store a short text (e.g. a weights digest) beside the scores."""
        _atomic_write(self.path / f"{name}.txt", text.encode("utf-8"))

    def load_text(self, name: str) -> str | None:
        file = self.path / f"{name}.txt"
        return file.read_text(encoding="utf-8") if file.exists() else None

    def save_weights(self, name: str, model: nn.Module) -> None:
        """Store a model's state dict (the candidate an audit trained, for its release)."""
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        _atomic_write(weights_file(self.path, name), buffer.getvalue())

    def has_weights(self, name: str) -> bool:
        return weights_file(self.path, name).is_file()


def folder_of(root: Path, key: str) -> Path:
    """The store folder of the cache key ``key`` (the report's ``training.cache_key``)."""
    return root / key[:20]


def weights_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.pt"


def load_weights(folder: Path, name: str) -> Mapping[str, Any] | None:
    """A stored state dict (tensors only: ``weights_only``), or None when absent."""
    file = weights_file(folder, name)
    if not file.is_file():
        return None
    state: Mapping[str, Any] = torch.load(file, map_location="cpu", weights_only=True)
    return state


def _atomic_write(path: Path, content: bytes) -> None:
    """Write a file so that a crash leaves the old state or the complete file. The
    temporary file's name is unique, so processes writing the same file at once (the
    ranks of a multi-process fit creating one store) each replace it whole."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
