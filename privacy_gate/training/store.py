"""Finished reference models' scores on disk, so an interrupted audit resumes.

Each finished model's scores are written atomically as soon as they exist. The folder is
keyed by a digest of everything that determines them (recipe, model, data, plan, seed),
so a changed recipe never reuses stale models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ScoreStore", "digest_of"]


def digest_of(data: Any) -> str:
    """SHA-256 of canonical JSON."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ScoreStore:
    """Per-model score vectors ``(n_records,)`` under ``root/<key>/``."""

    def __init__(self, root: Path, key: dict[str, Any], n_records: int) -> None:
        self.key = digest_of(key)
        self.path = root / self.key[:20]
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
        temporary = self._file(name).with_suffix(".tmp")
        with temporary.open("wb") as handle:
            np.save(handle, np.asarray(scores, dtype=np.float64))
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self._file(name))

    def save_text(self, name: str, text: str) -> None:
        """Store a short text (e.g. a weights digest) beside the scores."""
        _atomic_write(self.path / f"{name}.txt", text.encode("utf-8"))

    def load_text(self, name: str) -> str | None:
        file = self.path / f"{name}.txt"
        return file.read_text(encoding="utf-8") if file.exists() else None


def _atomic_write(path: Path, content: bytes) -> None:
    """Write a file so that a crash leaves the old state or the complete file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(content)
    temporary.replace(path)
