"""Signed audits with real Ed25519 keys: what verifies, what is refused, and the CLI."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privacy_gate.cli import main
from privacy_gate.errors import InputError, ReportError
from privacy_gate.pipeline import audit
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.records import records_from_columns
from privacy_gate.report import canonical_json, write_json
from privacy_gate.signals import make_signals
from privacy_gate.signing import (
    PASSPHRASE_ENVIRONMENT_VARIABLE,
    PUBLIC_KEY_ENVIRONMENT_VARIABLE,
    SIGNING_KEY_ENVIRONMENT_VARIABLE,
    SignatureError,
    generate_keypair,
    load_private_key,
    load_public_key,
    public_key_fingerprint,
    public_key_from_environment,
    report_is_signed_by,
    sign_report,
    signing_key_from_environment,
    verify_report,
    write_keypair,
)

RUN_ID = "0123456789abcdef0123456789abcdef"
MODEL_SHA256 = "ab" * 32


@pytest.fixture(autouse=True)
def _no_key_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        SIGNING_KEY_ENVIRONMENT_VARIABLE,
        PUBLIC_KEY_ENVIRONMENT_VARIABLE,
        PASSPHRASE_ENVIRONMENT_VARIABLE,
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """A real report: 16 reference models, 120 records, a planted leak in 8 of them."""
    n, k = 120, 16
    rng = np.random.default_rng(3)
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    shift = np.zeros(n)
    shift[:8] = 3.0
    signals = make_signals(rng.standard_normal((k, n)) + masks * shift, masks)
    records = records_from_columns(
        [f"rec-{i}" for i in range(n)],
        [f"pat-{i // 2}" for i in range(n)],
        {"site": ["a" if i % 3 else "b" for i in range(n)]},
    )
    return audit(
        signals, records, pseudonymizer=Pseudonymizer(key=b"signing-test")
    ).report.to_dict()


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    private_pem, public_pem = generate_keypair()
    return load_private_key(private_pem), load_public_key(public_pem)


@pytest.fixture(scope="module")
def signed(report: dict[str, Any], keys: tuple[Any, Any]) -> dict[str, Any]:
    return sign_report(report, keys[0], run_id=RUN_ID, model_sha256=MODEL_SHA256)


# ------------------------------------------------------------------ round trip


def test_sign_verify_round_trip(signed: dict[str, Any], keys: tuple[Any, Any]) -> None:
    verify_report(signed, keys[1])
    assert report_is_signed_by(signed, keys[1])
    assert signed["audit"]["run_id"] == RUN_ID
    assert signed["audit"]["model_sha256"] == MODEL_SHA256
    signature = signed["signature"]
    assert signature["algorithm"] == "ed25519"
    assert signature["public_key_sha256"] == public_key_fingerprint(keys[1])
    assert len(signature["public_key_sha256"]) == 64


def test_round_trip_through_a_file(
    signed: dict[str, Any], keys: tuple[Any, Any], tmp_path: Path
) -> None:
    path = tmp_path / "report.json"
    write_json(signed, path)
    verify_report(json.loads(path.read_text(encoding="utf-8")), keys[1])


def test_input_is_not_mutated(report: dict[str, Any], keys: tuple[Any, Any]) -> None:
    before = copy.deepcopy(report)
    result = sign_report(report, keys[0], run_id=RUN_ID, model_sha256=MODEL_SHA256)
    assert canonical_json(report) == canonical_json(before)
    assert "signature" not in report and "run_id" not in report["audit"]
    assert result is not report and result["audit"] is not report["audit"]


def test_fingerprint_is_sha256_of_the_raw_key(keys: tuple[Any, Any]) -> None:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    raw = keys[1].public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public_key_fingerprint(keys[1]) == hashlib.sha256(raw).hexdigest()
    assert public_key_fingerprint(keys[0]) == public_key_fingerprint(keys[1])


def test_none_keeps_the_recorded_ids_and_resigning_replaces(
    signed: dict[str, Any], keys: tuple[Any, Any]
) -> None:
    again = sign_report(signed, keys[0], run_id=None, model_sha256=None)
    assert again["audit"]["run_id"] == RUN_ID
    assert again["audit"]["model_sha256"] == MODEL_SHA256
    verify_report(again, keys[1])


def test_bad_ids_are_refused(report: dict[str, Any], keys: tuple[Any, Any]) -> None:
    with pytest.raises(InputError, match="64 hexadecimal"):
        sign_report(report, keys[0], run_id=RUN_ID, model_sha256="not-a-digest")
    with pytest.raises(InputError, match="run_id"):
        sign_report(report, keys[0], run_id=" ", model_sha256=None)
    upper = sign_report(report, keys[0], run_id=RUN_ID, model_sha256=MODEL_SHA256.upper())
    assert upper["audit"]["model_sha256"] == MODEL_SHA256


# -------------------------------------------------------------------- tampering


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(report: dict[str, Any]) -> None:
        target = report
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


TAMPERING = {
    "status": _set(("decision", "status"), "pass"),
    "a number": lambda r: r["summary"].update(
        patients_at_risk=r["summary"]["patients_at_risk"] + 1
    ),
    "a float by one ulp": lambda r: r["summary"]["patient_auc"].update(
        max=float(np.nextafter(r["summary"]["patient_auc"]["max"], 0.0))
    ),
    "run_id": _set(("audit", "run_id"), "another-run"),
    "model_sha256": _set(("audit", "model_sha256"), "cd" * 32),
    "an added key": _set(("audit", "note"), "trust me"),
    "an added section": _set(("extra",), {}),
    "a removed section": lambda r: r.pop("subgroups"),
}


@pytest.mark.parametrize("change", list(TAMPERING), ids=list(TAMPERING))
def test_tampering_breaks_verification(
    change: str, signed: dict[str, Any], keys: tuple[Any, Any]
) -> None:
    tampered = copy.deepcopy(signed)
    TAMPERING[change](tampered)
    assert canonical_json(tampered) != canonical_json(signed)
    with pytest.raises(SignatureError, match="changed after signing"):
        verify_report(tampered, keys[1])
    assert not report_is_signed_by(tampered, keys[1])


def test_another_key_is_refused_with_its_fingerprint(
    report: dict[str, Any], keys: tuple[Any, Any]
) -> None:
    other = load_private_key(generate_keypair()[0])
    forged = sign_report(report, other, run_id=RUN_ID, model_sha256=MODEL_SHA256)
    with pytest.raises(SignatureError, match="signed by another key") as error:
        verify_report(forged, keys[1])
    assert public_key_fingerprint(other) in str(error.value)
    assert public_key_fingerprint(keys[1]) in str(error.value)
    # Claiming the right fingerprint does not help: the signature itself is checked.
    forged["signature"]["public_key_sha256"] = public_key_fingerprint(keys[1])
    with pytest.raises(SignatureError, match="changed after signing"):
        verify_report(forged, keys[1])


def test_unsigned_report_is_refused(report: dict[str, Any], keys: tuple[Any, Any]) -> None:
    with pytest.raises(
        SignatureError, match="unsigned: nothing shows that the auditing side wrote it"
    ):
        verify_report(report, keys[1])
    assert issubclass(SignatureError, ReportError)


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ("abc", "malformed"),
        ({"algorithm": "rsa", "public_key_sha256": "x", "value": "x"}, "algorithm"),
        ({"algorithm": "ed25519", "public_key_sha256": None, "value": ""}, "another key"),
    ],
)
def test_malformed_signatures_are_refused(
    signature: Any, message: str, signed: dict[str, Any], keys: tuple[Any, Any]
) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_report({**signed, "signature": signature}, keys[1])


@pytest.mark.parametrize("value", ["", "not base64!", "QUJD", None])
def test_malformed_signature_values_are_refused(
    value: Any, signed: dict[str, Any], keys: tuple[Any, Any]
) -> None:
    bad = {**signed, "signature": {**signed["signature"], "value": value}}
    with pytest.raises(SignatureError, match="malformed"):
        verify_report(bad, keys[1])


# --------------------------------------------------------------------- key files


def test_key_files(tmp_path: Path) -> None:
    private, public = tmp_path / "keys" / "audit.pem", tmp_path / "keys" / "audit.pub.pem"
    fingerprint = write_keypair(private, public)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_key_fingerprint(load_public_key(public)) == fingerprint
    assert public_key_fingerprint(load_private_key(private)) == fingerprint
    assert b"ENCRYPTED" not in private.read_bytes()
    with pytest.raises(InputError, match="Refusing to overwrite"):
        write_keypair(private, public)
    assert public_key_fingerprint(load_public_key(public)) == fingerprint  # untouched
    assert write_keypair(private, public, overwrite=True) != fingerprint
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(InputError, match="same"):
        write_keypair(tmp_path / "x.pem", tmp_path / "x.pem")


def test_no_overwrite_of_either_file(tmp_path: Path) -> None:
    (tmp_path / "audit.pub.pem").write_text("keep me")
    with pytest.raises(InputError, match="Refusing to overwrite"):
        write_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub.pem")
    assert not (tmp_path / "audit.pem").exists()
    assert (tmp_path / "audit.pub.pem").read_text() == "keep me"


def test_encrypted_private_key(tmp_path: Path, report: dict[str, Any]) -> None:
    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub.pem"
    write_keypair(private, public, passphrase="correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    key = load_private_key(private, "correct horse")
    signed = sign_report(report, key, run_id=RUN_ID, model_sha256=None)
    verify_report(signed, load_public_key(public))
    with pytest.raises(InputError, match="is encrypted"):
        load_private_key(private)
    with pytest.raises(InputError, match="wrong passphrase"):
        load_private_key(private, "wrong")
    plain = tmp_path / "plain.pem"
    write_keypair(plain, tmp_path / "plain.pub.pem")
    with pytest.raises(InputError, match="not encrypted but a passphrase"):
        load_private_key(plain, "correct horse")


def test_wrong_kind_of_key_is_refused(tmp_path: Path) -> None:
    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub.pem"
    write_keypair(private, public)
    with pytest.raises(InputError, match="is a private key: verifiers hold only the public key"):
        load_public_key(private)
    with pytest.raises(InputError, match="is a public key: signing needs the private key"):
        load_private_key(public)
    with pytest.raises(InputError, match=r"Cannot read the public key file .*missing"):
        load_public_key(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(InputError, match="is not a PEM public key"):
        load_public_key(garbage)
    with pytest.raises(InputError, match="is not a PEM private key"):
        load_private_key(garbage)


def test_other_algorithms_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    private_pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InputError, match="is not an Ed25519 public key"):
        load_public_key(public_pem)
    with pytest.raises(InputError, match="is not an Ed25519 private key"):
        load_private_key(private_pem)


def test_keys_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert signing_key_from_environment() is None
    assert public_key_from_environment() is None
    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub.pem"
    fingerprint = write_keypair(private, public, passphrase="pw")
    monkeypatch.setenv(SIGNING_KEY_ENVIRONMENT_VARIABLE, str(private))
    monkeypatch.setenv(PUBLIC_KEY_ENVIRONMENT_VARIABLE, str(public))
    monkeypatch.setenv(PASSPHRASE_ENVIRONMENT_VARIABLE, "pw")
    signing_key = signing_key_from_environment()
    public_key = public_key_from_environment()
    assert signing_key is not None and public_key is not None
    assert public_key_fingerprint(signing_key) == public_key_fingerprint(public_key) == fingerprint


# ---------------------------------------------------------------------------- CLI


def test_cli_keys(
    tmp_path: Path,
    report: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub.pem"
    assert main(["keys", "generate", "--private", str(private), "--public", str(public)]) == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    fingerprint = public_key_fingerprint(load_public_key(public))
    assert fingerprint in capsys.readouterr().out

    # No overwrite without --force; with it, a new key.
    assert main(["keys", "generate", "--private", str(private), "--public", str(public)]) == 2
    assert "Refusing to overwrite" in capsys.readouterr().err
    assert public_key_fingerprint(load_public_key(public)) == fingerprint
    args = ["keys", "generate", "--private", str(private), "--public", str(public), "--force"]
    assert main(args) == 0
    fingerprint = public_key_fingerprint(load_public_key(public))
    capsys.readouterr()

    assert main(["keys", "fingerprint", str(public)]) == 0
    assert capsys.readouterr().out.strip() == fingerprint
    assert main(["keys", "fingerprint", str(private)]) == 0
    assert capsys.readouterr().out.strip() == fingerprint

    path = tmp_path / "report.json"
    write_json(report, path)
    verify = ["keys", "verify", str(path), "--public-key", str(public)]
    assert main(verify) == 1  # unsigned
    assert "unsigned" in capsys.readouterr().out

    signed_path = tmp_path / "signed.json"
    sign = ["keys", "sign", str(path), "--key", str(private), "--run-id", RUN_ID]
    assert main([*sign, "--model-sha256", MODEL_SHA256, "--out", str(signed_path)]) == 0
    assert "signature" not in json.loads(path.read_text())  # --out leaves the input alone
    assert main(["keys", "verify", str(signed_path), "--public-key", str(public)]) == 0
    out = capsys.readouterr().out
    assert "VALID" in out and RUN_ID in out and MODEL_SHA256 in out

    assert main(sign) == 0  # in place
    capsys.readouterr()
    assert main(verify) == 0
    assert json.loads(path.read_text())["audit"]["run_id"] == RUN_ID
    assert not list(tmp_path.glob("*.tmp"))

    tampered = json.loads(path.read_text())
    tampered["decision"]["status"] = "pass" if tampered["decision"]["status"] != "pass" else "fail"
    path.write_text(json.dumps(tampered))
    capsys.readouterr()
    assert main(verify) == 1
    assert "INVALID" in capsys.readouterr().out

    # Public key from the environment; a private key where the public one belongs is an error.
    monkeypatch.setenv(PUBLIC_KEY_ENVIRONMENT_VARIABLE, str(public))
    assert main(["keys", "verify", str(signed_path)]) == 0
    assert main(["keys", "verify", str(signed_path), "--public-key", str(private)]) == 2
    assert "verifiers hold only the public key" in capsys.readouterr().err


def test_cli_unreadable_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub.pem"
    write_keypair(private, public)
    missing = str(tmp_path / "missing.json")
    assert main(["keys", "verify", missing, "--public-key", str(public)]) == 2
    assert main(["keys", "sign", missing, "--key", str(private)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["keys", "verify", str(bad), "--public-key", str(public)]) == 2
    assert main(["keys", "verify", str(bad), "--public-key", str(tmp_path / "nokey")]) == 2
    assert main(["keys", "sign", str(bad)]) == 2  # no --key, no environment
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(e.startswith("privacy-gate: ERROR") for e in errors)
    assert "No signing key" in errors[-1]


def test_cli_encrypted_key_passphrase_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub.pem"
    monkeypatch.setenv(PASSPHRASE_ENVIRONMENT_VARIABLE, "s3cret")
    assert main(["keys", "generate", "--private", str(private), "--public", str(public)]) == 0
    assert "encrypted" in capsys.readouterr().out
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    assert main(["keys", "fingerprint", str(private)]) == 0
    monkeypatch.delenv(PASSPHRASE_ENVIRONMENT_VARIABLE)
    assert main(["keys", "fingerprint", str(private)]) == 2
    assert PASSPHRASE_ENVIRONMENT_VARIABLE in capsys.readouterr().err


def test_cli_verify_reads_a_report_as_the_gate_does(
    report: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid signature over a report the gate cannot use (an older schema) exits 1 and
    says why, as the registry gate would refuse it."""
    private, public = tmp_path / "audit.pem", tmp_path / "audit.pub.pem"
    write_keypair(private, public)
    older = dict(report, schema_version="1.9")
    path = tmp_path / "older.json"
    write_json(sign_report(older, load_private_key(private), run_id=RUN_ID,
                           model_sha256=MODEL_SHA256), path)  # fmt: skip
    assert main(["keys", "verify", str(path), "--public-key", str(public)]) == 1
    out = capsys.readouterr().out
    assert "VALID signature, but not a usable audit" in out and "1.9" in out
