"""Keyed pseudonyms of patient and record ids (docs/reference/report.md, "Pseudonyms")."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy_gate.pseudonyms import KEY_ENVIRONMENT_VARIABLE, Pseudonymizer


def _expected(key: bytes, kind: bytes, identifier: str) -> str:
    """Independent computation of the documented formula."""
    message = kind + b"\0" + identifier.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]


def test_environment_variable_name() -> None:
    assert KEY_ENVIRONMENT_VARIABLE == "PRIVACY_GATE_PSEUDONYM_KEY"


def test_patient_pseudonym_matches_hmac_sha256() -> None:
    key = b"secret-key"
    p = Pseudonymizer(key=key)
    assert p.patient("12345") == _expected(key, b"patient", "12345")
    # A fixed value, pinned against the standard library on another day.
    assert p.patient("12345") == hmac.new(key, b"patient\x0012345", "sha256").hexdigest()[:16]


def test_record_pseudonym_matches_hmac_sha256() -> None:
    key = b"secret-key"
    p = Pseudonymizer(key=key)
    assert p.record("train/7") == _expected(key, b"record", "train/7")


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=1, max_size=64), identifier=st.text(max_size=40))
def test_pseudonyms_match_formula_for_any_id(key: bytes, identifier: str) -> None:
    p = Pseudonymizer(key=key)
    patient, record = p.patient(identifier), p.record(identifier)
    assert patient == _expected(key, b"patient", identifier)
    assert record == _expected(key, b"record", identifier)
    assert len(patient) == len(record) == 16
    assert all(c in "0123456789abcdef" for c in patient + record)


def test_namespaces_differ() -> None:
    p = Pseudonymizer(key=b"k")
    assert p.patient("42") != p.record("42")
    assert p.key_of("patient", "42") == p.patient("42")
    assert p.key_of("record", "42") == p.record("42")


def test_different_ids_and_keys_differ() -> None:
    a, b = Pseudonymizer(key=b"k1"), Pseudonymizer(key=b"k2")
    assert a.patient("1") != a.patient("2")
    assert a.patient("1") != b.patient("1")


def test_key_from_environment_gives_stable_pseudonyms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, "a shared secret")
    first = Pseudonymizer.from_environment()
    second = Pseudonymizer.from_environment()
    assert not first.key_is_ephemeral
    assert first.key == b"a shared secret"
    assert first.patient("P-1") == second.patient("P-1")
    assert first.record("R-1") == second.record("R-1")
    assert first.patient("P-1") == _expected(b"a shared secret", b"patient", "P-1")
    assert first.scheme == "hmac-sha256"


def test_without_environment_key_two_pseudonymizers_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)
    first = Pseudonymizer.from_environment()
    second = Pseudonymizer.from_environment()
    assert first.key_is_ephemeral and second.key_is_ephemeral
    assert len(first.key) >= 16
    assert first.key != second.key
    assert first.patient("P-1") != second.patient("P-1")
    # Stable within one pseudonymizer, so one audit's outputs stay joinable.
    assert first.patient("P-1") == first.patient("P-1")


def test_empty_environment_key_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, "")
    assert Pseudonymizer.from_environment().key_is_ephemeral


def test_raw_mode_passes_ids_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, "k")
    p = Pseudonymizer.from_environment(raw=True)
    assert p.raw
    assert p.patient("P-1") == "P-1"
    assert p.record("train/3") == "train/3"
    assert p.key_of("record", "train/3") == "train/3"
    assert p.scheme == "raw"
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE)
    assert Pseudonymizer.from_environment(raw=True).patient("P-1") == "P-1"


def test_key_is_not_in_repr() -> None:
    p = Pseudonymizer(key=b"very-secret-key-bytes")
    assert "very-secret" not in repr(p)
    assert "very-secret" not in str(p)
