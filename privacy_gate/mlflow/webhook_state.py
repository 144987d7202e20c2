"""What the webhook receiver remembers across deliveries and restarts: one SQLite file.

- ``deliveries``: the ids of deliveries taken for processing (the replay cache). An id is
  claimed before the delivery is processed and released when processing failed, so
  MLflow's own retry of a failed delivery (same id) is taken, while a replay is refused.
  Ids older than the freshness window are pruned: their timestamp refuses them anyway.
- ``verified``: per protected (model, alias), the versions seen named by that alias whose
  audit verified, with when (the event's time): the candidates to restore. A restore
  re-verifies a candidate first; one that no longer verifies is forgotten.
- ``placed``: per protected (model, alias), what the receiver itself last put there: a
  restored version, or nothing (it removed the alias and had no verified version to put
  back). A holder the receiver placed is replaced by a newer verified candidate learned
  later (deliveries can arrive out of order); a holder someone else chose is left alone.
- ``verdicts``: the ``privacy_gate.*`` tags the receiver last wrote on each version, so a
  client's forged or deleted verdict tag is put back without verifying again.

Aliases are stored canonical (`privacy_gate.mlflow.registry_settings.canonical_alias`, as
protection is matched): 'Champion' and 'champion' share one record.

Pure standard library; one connection, used under the caller's lock.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

__all__ = ["STATE_FILE", "WebhookState"]

STATE_FILE = "webhook_state.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS verified (
    model TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (model, alias, version));
CREATE TABLE IF NOT EXISTS placed (
    model TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER,
    PRIMARY KEY (model, alias));
CREATE TABLE IF NOT EXISTS verdicts (
    model TEXT NOT NULL, version INTEGER NOT NULL, tags TEXT NOT NULL,
    PRIMARY KEY (model, version));
"""


class WebhookState:
    """The receiver's state in ``<state dir>/webhook_state.sqlite`` (created when absent)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / STATE_FILE
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ replay cache

    def claim_delivery(self, delivery_id: str, *, now: float, keep_s: float) -> bool:
        """Record ``delivery_id``; False when it was already taken (a replay). Ids older
        than ``keep_s`` are pruned first."""
        self._db.execute("DELETE FROM deliveries WHERE received < ?", (now - keep_s,))
        try:
            self._db.execute("INSERT INTO deliveries VALUES (?, ?)", (delivery_id, now))
        except sqlite3.IntegrityError:
            return False
        return True

    def release_delivery(self, delivery_id: str) -> None:
        """Forget a delivery whose processing failed: MLflow's retry of it is taken."""
        self._db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    # ------------------------------------------------------------------ restore candidates

    def add_verified(self, model: str, alias: str, version: int, at: float) -> None:
        """``version`` held (or was given) ``alias`` with a verified audit at ``at`` (Unix
        seconds; the latest time seen is kept)."""
        self._db.execute(
            "INSERT INTO verified VALUES (?, ?, ?, ?) ON CONFLICT (model, alias, version) "
            "DO UPDATE SET at = max(at, excluded.at)",
            (model, alias, version, at),
        )

    def forget_verified(self, model: str, alias: str, version: int) -> None:
        self._db.execute(
            "DELETE FROM verified WHERE model = ? AND alias = ? AND version = ?",
            (model, alias, version),
        )

    def verified_newest_first(self, model: str, alias: str) -> list[int]:
        rows = self._db.execute(
            "SELECT version FROM verified WHERE model = ? AND alias = ? "
            "ORDER BY at DESC, version DESC",
            (model, alias),
        )
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------------ the receiver's own

    def placed(self, model: str, alias: str) -> tuple[bool, int | None]:
        """(whether the receiver placed the alias's current state, the version it put
        there or None when it removed the alias)."""
        row = self._db.execute(
            "SELECT version FROM placed WHERE model = ? AND alias = ?", (model, alias)
        ).fetchone()
        return (False, None) if row is None else (True, None if row[0] is None else int(row[0]))

    def set_placed(self, model: str, alias: str, version: int | None) -> None:
        self._db.execute(
            "INSERT INTO placed VALUES (?, ?, ?) ON CONFLICT (model, alias) "
            "DO UPDATE SET version = excluded.version",
            (model, alias, version),
        )

    def clear_placed(self, model: str, alias: str) -> None:
        self._db.execute("DELETE FROM placed WHERE model = ? AND alias = ?", (model, alias))

    def vacated(self) -> list[tuple[str, str]]:
        """(model, alias) pairs the receiver emptied: reconciled on start-up too."""
        rows = self._db.execute("SELECT model, alias FROM placed WHERE version IS NULL")
        return [(str(m), str(a)) for m, a in rows]

    # ------------------------------------------------------------------ verdict tags

    def verdict(self, model: str, version: int) -> dict[str, str] | None:
        row = self._db.execute(
            "SELECT tags FROM verdicts WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def set_verdict(self, model: str, version: int, tags: dict[str, str]) -> None:
        self._db.execute(
            "INSERT INTO verdicts VALUES (?, ?, ?) ON CONFLICT (model, version) "
            "DO UPDATE SET tags = excluded.tags",
            (model, version, json.dumps(tags, sort_keys=True)),
        )
