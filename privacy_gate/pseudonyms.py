"""Keyed pseudonyms for patient and record ids.

Per-patient results are membership evidence, so outputs carry
``hex(HMAC-SHA256(key, "patient\\0" + id))[:16]`` instead of raw ids. The key comes only
from the environment (``PRIVACY_GATE_PSEUDONYM_KEY``); without it a random key is used
and not stored, so the pseudonyms cannot be linked back by anyone.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["KEY_ENVIRONMENT_VARIABLE", "Pseudonymizer"]

KEY_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_PSEUDONYM_KEY"
_LOG = logging.getLogger(__name__)
_BLOCK_SIZE = 64  # SHA-256
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


def _keyed_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256 (RFC 2104) inner and outer hash states with the padded key absorbed.

    Copying them per id gives ``hmac.new(key, message, sha256)`` without re-deriving the
    key pads for each of the hundreds of thousands of ids of an audit.
    """
    if len(key) > _BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK_SIZE, b"\0")
    return hashlib.sha256(key.translate(_INNER_PAD)), hashlib.sha256(key.translate(_OUTER_PAD))


@dataclass(frozen=True, repr=False)
class Pseudonymizer:
    """Turns ids into keyed pseudonyms (or passes them through with ``raw=True``).

    >>> p = Pseudonymizer(key=b"k")
    >>> p.patient("42") == p.patient("42") != p.record("42")
    True
    >>> len(p.patient("42"))
    16
    """

    key: bytes
    raw: bool = False
    key_is_ephemeral: bool = False

    @classmethod
    def from_environment(cls, *, raw: bool = False) -> Pseudonymizer:
        """Key from ``PRIVACY_GATE_PSEUDONYM_KEY``; a random, unstored key when unset."""
        value = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
        if value:
            return cls(key=value.encode("utf-8"), raw=raw)
        if not raw:
            _LOG.info(
                "%s is not set: pseudonyms use a random key that is not stored, so "
                "they cannot be linked across audits.",
                KEY_ENVIRONMENT_VARIABLE,
            )
        return cls(key=secrets.token_bytes(32), raw=raw, key_is_ephemeral=True)

    @functools.cached_property
    def _new_states(self) -> tuple[Callable[[], hashlib._Hash], Callable[[], hashlib._Hash]]:
        """Fresh copies of the keyed inner and outer states, derived once per key."""
        inner, outer = _keyed_states(bytes(self.key))
        return inner.copy, outer.copy

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the fields only (hash states cannot be pickled; they are re-derived)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _digest(self, kind: str, identifier: str) -> str:
        """``hex(HMAC-SHA256(key, kind + "\\0" + identifier))[:16]``."""
        new_inner, new_outer = self._new_states
        state = new_inner()
        state.update(f"{kind}\0{identifier}".encode())
        result = new_outer()
        result.update(state.digest())
        return result.hexdigest()[:16]

    def patient(self, patient_id: str) -> str:
        """Pseudonym of a patient id."""
        return patient_id if self.raw else self._digest("patient", patient_id)

    def record(self, record_id: str) -> str:
        """Pseudonym of a record id (also the key of a record without a patient id)."""
        return record_id if self.raw else self._digest("record", record_id)

    def key_of(self, kind: str, identifier: str) -> str:
        """Pseudonym of a ``(kind, id)`` pair from `RecordTable.patient_index`."""
        return self.patient(identifier) if kind == "patient" else self.record(identifier)

    @property
    def scheme(self) -> str:
        return "raw" if self.raw else "hmac-sha256"

    @property
    def key_id(self) -> str | None:
        """A public name of the key, so two audits can tell whether their pseudonyms
        match (`privacy_gate.comparison`): ``hex(HMAC-SHA256(key, "key-id"))[:16]``,
        which reveals nothing of the key. None for raw ids and for a random key (its
        pseudonyms match no other audit).

        >>> Pseudonymizer(key=b"k").key_id == Pseudonymizer(key=b"k").key_id
        True
        >>> Pseudonymizer(key=b"k").key_id != Pseudonymizer(key=b"other").key_id
        True
        """
        if self.raw or self.key_is_ephemeral:
            return None
        return self._digest("key-id", "")
