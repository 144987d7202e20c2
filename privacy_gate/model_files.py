"""The bytes an audit binds: a manifest of a logged model's files (path, size, SHA-256).

A digest of ``state_dict()`` names the weights, not the model: a subclass with the same
parameters and another ``forward`` shares it. A signed audit therefore names every file of
the model as MLflow stored it, hashed as raw bytes. Comparing a version's files with that
manifest needs no model code at all: nothing is deserialised, so the registry server can
check a client's upload without running it.

What the manifest covers depends on the serialization format
(docs/explanation/registry-security.md):

- ``pt2`` (``torch.export``): the exported program fixes the forward computation and the
  weights; the files are the whole model.
- ``pickle``: the files hold the weights and a reference to a class by name; the forward is
  whatever that class's code is where the model is loaded. The manifest binds the files,
  not that code, so protected aliases refuse pickle models unless the registry opts in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from privacy_gate.errors import InputError, ReportError

__all__ = [
    "FORMATS",
    "NOT_AUDITED",
    "PICKLE",
    "PT2",
    "ModelFile",
    "ModelFiles",
    "differences",
    "manifest_of",
    "serialization_format",
]

PT2 = "pt2"
PICKLE = "pickle"
UNKNOWN = "unknown"
FORMATS = (PT2, PICKLE, UNKNOWN)
NOT_AUDITED = "not in the audited model"
"""How `differences` ends the line of a file the audit does not name."""
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    """One file of a logged model: its path relative to the model's root (POSIX)."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelFiles:
    """Every file of a logged model and its serialization format (`FORMATS`)."""

    format: str
    files: tuple[ModelFile, ...]

    @property
    def sha256(self) -> str:
        """One digest of the whole listing (sorted paths, sizes and digests)."""
        listing = [[f.path, f.size, f.sha256] for f in sorted(self.files, key=lambda f: f.path)]
        return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }

    @classmethod
    def from_dict(cls, value: Any, *, where: str = "audit.model_files") -> ModelFiles:
        """Strictly read (a signed report's field): every path safe, every digest hex."""
        if not isinstance(value, Mapping):
            raise ReportError(f"The report's field {where!r} must be a JSON object.")
        fmt, files = value.get("format"), value.get("files")
        if fmt not in FORMATS:
            raise ReportError(f"The report's field '{where}.format' must be one of {FORMATS}.")
        if not isinstance(files, list) or not files:
            raise ReportError(f"The report's field '{where}.files' must be a non-empty array.")
        read: list[ModelFile] = []
        for i, item in enumerate(files):
            at = f"{where}.files[{i}]"
            if not isinstance(item, Mapping):
                raise ReportError(f"The report's field {at!r} must be a JSON object.")
            path, digest, size = item.get("path"), item.get("sha256"), item.get("size")
            if not isinstance(path, str) or _unsafe(path):
                raise ReportError(f"The report's field '{at}.path' must be a relative path.")
            if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
                raise ReportError(f"The report's field '{at}.sha256' must be a SHA-256 (hex).")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ReportError(f"The report's field '{at}.size' must be a byte count.")
            read.append(ModelFile(path, digest, size))
        if len({f.path for f in read}) != len(read):
            raise ReportError(f"The report's field '{where}.files' names a path twice.")
        return cls(fmt, tuple(sorted(read, key=lambda f: f.path)))


def _unsafe(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return not parts or path.startswith("/") or "\\" in path or ".." in parts or "." in parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(root: str | Path) -> ModelFiles:
    """The manifest of a model directory as stored (links refused: they name other bytes)."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(
            f"The model directory {str(base)!r} does not exist. HINT: give the folder of a "
            "logged MLflow model (the one holding MLmodel)."
        )
    files: list[ModelFile] = []
    for folder, dirs, names in os.walk(base, followlinks=False):
        for name in [*names, *dirs]:
            full = Path(folder) / name
            if full.is_symlink():
                raise InputError(
                    f"The model directory holds a symbolic link {str(full)!r}: a manifest "
                    "binds bytes, not links. HINT: log the model's files themselves."
                )
        for name in names:
            full = Path(folder) / name
            relative = full.relative_to(base).as_posix()
            files.append(ModelFile(relative, _sha256(full), full.stat().st_size))
    if not files:
        raise InputError(f"The model directory {str(base)!r} holds no files.")
    files.sort(key=lambda f: f.path)
    return ModelFiles(serialization_format(f.path for f in files), tuple(files))


def serialization_format(paths: Iterable[str]) -> str:
    """``pt2`` when the model's data is a ``torch.export`` archive and nothing is pickled;
    ``pickle`` when a pickled model (``.pth``/``.pt``/``.pkl``) is among the files."""
    names = [PurePosixPath(p).name for p in paths]
    if any(n.endswith((".pth", ".pt", ".pkl", ".pickle")) for n in names):
        return PICKLE
    if any(n.endswith(".pt2") for n in names):
        return PT2
    return UNKNOWN


def differences(expected: ModelFiles, actual: ModelFiles) -> list[str]:
    """What differs between the signed manifest and the files found, file by file."""
    want = {f.path: f for f in expected.files}
    have = {f.path: f for f in actual.files}
    found: list[str] = []
    for path in sorted(want.keys() | have.keys()):
        if path not in have:
            found.append(f"{path}: missing")
        elif path not in want:
            found.append(f"{path}: {NOT_AUDITED}")
        elif want[path].sha256 != have[path].sha256 or want[path].size != have[path].size:
            found.append(
                f"{path}: changed (audited sha256 {want[path].sha256[:12]}..., "
                f"now {have[path].sha256[:12]}...)"
            )
    return found
