"""Shared helpers for the integration tests: a signals.npz / records.csv pair on disk.

K reference models, each record IN for exactly K/2 of them; the first ``n_exposed``
records get a planted membership effect (their scores rise by ``effect`` in the models
that trained on them). Raw ids carry a recognisable marker so tests can grep outputs
for leaks.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from postgres_server import postgres_server  # the session's PostgreSQL (skips without one)

__all__ = ["postgres_server"]

RECORD_MARKER = "REC-ZQX"
PATIENT_MARKER = "PAT-ZQX"


@dataclass(frozen=True)
class Dataset:
    signals: Path
    records: Path
    record_ids: tuple[str, ...]
    patient_ids: tuple[str | None, ...]
    n_reference_models: int

    @property
    def n_records(self) -> int:
        return len(self.record_ids)

    @property
    def n_patients(self) -> int:
        with_id = {p for p in self.patient_ids if p is not None}
        return len(with_id) + sum(p is None for p in self.patient_ids)


def write_dataset(
    directory: Path,
    *,
    n: int = 200,
    k: int = 16,
    seed: int = 0,
    effect: float = 3.0,
    n_exposed: int = 10,
    target: bool = True,
    nan: bool = False,
    records_per_patient: int = 2,
) -> Dataset:
    """Write ``signals.npz`` and ``records.csv`` into ``directory``.

    Every 25th record has no patient id (it is its own patient). Target members of the
    release candidate are the even records.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ranks = np.argsort(rng.random((k, n)), axis=0)
    masks = ranks < k // 2  # every column holds each rank once: exactly k/2 IN
    shift = np.zeros(n)
    shift[:n_exposed] = effect
    scores = rng.standard_normal((k, n)) + masks * shift
    if nan:
        scores[1, 3] = np.nan
    arrays: dict[str, np.ndarray] = {"scores": scores, "masks": masks}
    if target:
        members = np.arange(n) % 2 == 0
        arrays["target_scores"] = rng.standard_normal(n) + 0.5 * members
        arrays["target_members"] = members
    signals_path = directory / "signals.npz"
    np.savez(signals_path, **arrays)  # type: ignore[arg-type]

    record_ids = tuple(f"{RECORD_MARKER}-{i:04d}" for i in range(n))
    patient_ids = tuple(
        None if i % 25 == 24 else f"{PATIENT_MARKER}-{i // records_per_patient:04d}"
        for i in range(n)
    )
    records_path = directory / "records.csv"
    with records_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record_id", "patient_id", "sex"])
        for i, (record_id, patient_id) in enumerate(zip(record_ids, patient_ids, strict=True)):
            p = i // records_per_patient  # sex is the patient's, as in real records
            sex = "unknown" if p % 17 == 0 else ("F" if p % 3 else "M")
            writer.writerow([record_id, patient_id or "", sex])
    return Dataset(signals_path, records_path, record_ids, patient_ids, k)


@pytest.fixture(scope="session", autouse=True)
def _not_on_a_github_runner() -> Iterator[None]:
    """Tests run as outside GitHub Actions, also when CI runs them there: the CLI's GitHub
    mode (on when GITHUB_ACTIONS=true) would write into the real job summary and print
    annotations. Tests of that mode set these variables themselves."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """N=200 records, K=16 reference models, a release candidate and 10 exposed records."""
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def nan_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """Like `dataset`, with one NaN score (model 1, record 3)."""
    return write_dataset(tmp_path_factory.mktemp("nan"), nan=True)


@pytest.fixture(scope="session")
def make_dataset():  # type: ignore[no-untyped-def]
    """The `write_dataset` function, for tests that need their own variant."""
    return write_dataset


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a YAML config from text and return its path."""
    counter = iter(range(1000))

    def write(text: str) -> Path:
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write
