"""Signed audits: Ed25519 over a report's canonical JSON.

A promotion trusts a report only when it carries a valid signature, so a ``status: pass``
typed by hand (a tag, an edited file) is not an audit. The auditing side holds the private
key and signs; every verifier (the registry plugin, ``promote``, CI) holds only the public
key, so no verifier can forge an audit.

The signed bytes are ``canonical_json(report)`` with the ``signature`` field left out; they
include ``audit.run_id`` and ``audit.model_sha256`` (the digest of the audited weights), so
a signature cannot be moved to another run or to other weights.

Keys are found through the environment, never through config or report: the private key
never goes into a policy file, a report, a run's params or tags.

- ``PRIVACY_GATE_SIGNING_KEY``: path of the PEM private key (auditing side only);
- ``PRIVACY_GATE_KEY_PASSPHRASE``: its passphrase, when it is encrypted;
- ``PRIVACY_GATE_PUBLIC_KEY``: path of the PEM public key (verifiers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy_gate.errors import InputError, ReportError
from privacy_gate.model_files import ModelFiles
from privacy_gate.report import canonical_json, non_finite_field

__all__ = [
    "ALGORITHM",
    "PASSPHRASE_ENVIRONMENT_VARIABLE",
    "PUBLIC_KEY_ENVIRONMENT_VARIABLE",
    "SIGNATURE_FIELD",
    "SIGNING_KEY_ENVIRONMENT_VARIABLE",
    "SignatureError",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "passphrase_from_environment",
    "public_key_fingerprint",
    "public_key_from_environment",
    "report_is_signed_by",
    "sign_report",
    "signing_key_from_environment",
    "verify_report",
    "write_keypair",
]

ALGORITHM = "ed25519"
SIGNATURE_FIELD = "signature"
SIGNING_KEY_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_SIGNING_KEY"
PUBLIC_KEY_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_PUBLIC_KEY"
PASSPHRASE_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_KEY_PASSPHRASE"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_BYTES = 64
_GENERATE = "create a key pair with 'privacy-gate keys generate'."
_log = logging.getLogger(__name__)


class SignatureError(ReportError):
    """A report whose signature is missing or does not verify: never a passing audit."""


# --------------------------------------------------------------------------- keys


def _passphrase_bytes(passphrase: str | bytes | None) -> bytes | None:
    """Empty means none: an empty passphrase protects nothing."""
    if passphrase is None or passphrase in ("", b""):
        return None
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)


def generate_keypair(passphrase: str | bytes | None = None) -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as PEM: (PKCS8 private, SubjectPublicKeyInfo public).

    The private key is encrypted with ``passphrase`` when one is given.
    """
    private_key = Ed25519PrivateKey.generate()
    secret = _passphrase_bytes(passphrase)
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if secret is None
        else serialization.BestAvailableEncryption(secret)
    )
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return private_pem, _public_pem(private_key.public_key())


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Mode 0o600 from the first byte; atomic replace only when overwriting was asked."""
    if overwrite:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    else:  # O_EXCL: never clobber a key, even one created a moment ago by someone else
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        temporary = str(path)
    try:
        os.fchmod(descriptor, 0o600)  # mkstemp and the umask agree, but say it explicitly
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_keypair(
    private_path: str | Path,
    public_path: str | Path,
    *,
    passphrase: str | bytes | None = None,
    overwrite: bool = False,
) -> str:
    """Generate a key pair into two PEM files and return the public key's fingerprint.

    The private key file is created with mode 0o600. Existing files are refused unless
    ``overwrite``: replacing a signing key silently would orphan every signed audit.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise InputError(
            f"The private and public key paths are the same ({str(private_path)!r}). "
            "HINT: give two files, e.g. audit_key.pem and audit_key.pub.pem."
        )
    if not overwrite:
        existing = [str(p) for p in (private_path, public_path) if p.exists() or p.is_symlink()]
        if existing:
            raise InputError(
                f"Refusing to overwrite the existing key file(s) {existing}. HINT: a new key "
                "invalidates every audit signed with the old one; pass --force "
                "(overwrite=True) if that is what you want."
            )
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_pem, public_pem = generate_keypair(passphrase)
    try:
        _write_private(private_path, private_pem, overwrite=overwrite)
    except FileExistsError:
        raise InputError(
            f"Refusing to overwrite the existing key file {str(private_path)!r}. "
            "HINT: pass --force (overwrite=True) to replace it."
        ) from None
    temporary = public_path.with_name(f".{public_path.name}.tmp")
    temporary.write_bytes(public_pem)
    temporary.chmod(0o644)
    temporary.replace(public_path)
    return public_key_fingerprint(load_public_key(public_pem))


def _read_pem(
    path_or_pem: str | Path | bytes, what: str, variable: str
) -> tuple[bytes, str, Path | None]:
    """The PEM bytes, a subject for messages and the file (bytes or "-----BEGIN" text: PEM)."""
    if isinstance(path_or_pem, bytes):
        return path_or_pem, f"The {what} given", None
    if isinstance(path_or_pem, str) and path_or_pem.lstrip().startswith("-----BEGIN"):
        return path_or_pem.encode("utf-8"), f"The {what} given", None
    path = Path(path_or_pem)
    try:
        return path.read_bytes(), f"The {what} file {str(path)!r}", path
    except OSError as exc:
        raise InputError(
            f"Cannot read the {what} file {str(path)!r}: {exc.strerror}. HINT: check the "
            f"path (or {variable}); {_GENERATE}"
        ) from None


def load_private_key(
    path_or_pem: str | Path | bytes, passphrase: str | bytes | None = None
) -> Ed25519PrivateKey:
    """The Ed25519 signing key from a PEM file (or PEM bytes), decrypted with ``passphrase``."""
    data, subject, path = _read_pem(path_or_pem, "private key", SIGNING_KEY_ENVIRONMENT_VARIABLE)
    if path is not None:
        _warn_if_exposed(path)
    if b"PRIVATE KEY-----" not in data:
        if b"PUBLIC KEY-----" in data:
            raise InputError(
                f"{subject} is a public key: signing needs the private key. HINT: point --key "
                f"(or {SIGNING_KEY_ENVIRONMENT_VARIABLE}) at the private PEM written by "
                "'privacy-gate keys generate'."
            )
        raise InputError(f"{subject} is not a PEM private key. HINT: {_GENERATE}")
    secret = _passphrase_bytes(passphrase)
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError:  # cryptography: a passphrase missing, or given for a plain key
        if secret is None:
            raise InputError(
                f"{subject} is encrypted. HINT: set {PASSPHRASE_ENVIRONMENT_VARIABLE} to its "
                "passphrase."
            ) from None
        raise InputError(
            f"{subject} is not encrypted but a passphrase was given. HINT: unset "
            f"{PASSPHRASE_ENVIRONMENT_VARIABLE}, or generate an encrypted key."
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        reason = "wrong passphrase?" if secret is not None else str(exc)
        raise InputError(
            f"{subject} cannot be loaded ({reason}). HINT: check "
            f"{PASSPHRASE_ENVIRONMENT_VARIABLE}, or {_GENERATE}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(
            f"{subject} is not an Ed25519 private key (it is {type(key).__name__}). "
            f"HINT: {_GENERATE}"
        )
    return key


def _warn_if_exposed(path: Path) -> None:
    """A signing key others can read lets them forge audits: say so (not fatal)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning(
            "The private key file %r is readable by other users (mode %o); anyone who can "
            "read it can forge audits. HINT: chmod 600 %s",
            str(path),
            stat.S_IMODE(mode),
            path,
        )


def load_public_key(path_or_pem: str | Path | bytes) -> Ed25519PublicKey:
    """The Ed25519 verification key from a PEM file (or PEM bytes); private keys refused."""
    data, subject, _ = _read_pem(path_or_pem, "public key", PUBLIC_KEY_ENVIRONMENT_VARIABLE)
    if b"PRIVATE KEY-----" in data:
        raise InputError(
            f"{subject} is a private key: verifiers hold only the public key. HINT: give the "
            "public PEM written by 'privacy-gate keys generate'; the private key stays on the "
            "auditing side."
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(f"{subject} is not a PEM public key. HINT: {_GENERATE}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(
            f"{subject} is not an Ed25519 public key (it is {type(key).__name__}). "
            f"HINT: {_GENERATE}"
        )
    return key


def public_key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: names a key without showing it."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def passphrase_from_environment() -> str | None:
    """``PRIVACY_GATE_KEY_PASSPHRASE``, or None when unset or empty."""
    return os.environ.get(PASSPHRASE_ENVIRONMENT_VARIABLE) or None


def signing_key_from_environment() -> Ed25519PrivateKey | None:
    """The private key at ``PRIVACY_GATE_SIGNING_KEY`` (None when unset): auditing side."""
    path = os.environ.get(SIGNING_KEY_ENVIRONMENT_VARIABLE)
    if not path:
        return None
    return load_private_key(Path(path), passphrase_from_environment())


def public_key_from_environment() -> Ed25519PublicKey | None:
    """The public key at ``PRIVACY_GATE_PUBLIC_KEY`` (None when unset): verifiers."""
    path = os.environ.get(PUBLIC_KEY_ENVIRONMENT_VARIABLE)
    if not path:
        return None
    return load_public_key(Path(path))


# ----------------------------------------------------------------------- reports


def _signed_bytes(report: Mapping[str, Any]) -> bytes:
    """What is signed; a report that has no canonical JSON cannot carry a valid signature,
    nor can one holding a non-finite number (canonical JSON writes it as null, so a signed
    null would also verify as Infinity)."""
    bad = non_finite_field({k: v for k, v in report.items() if k != SIGNATURE_FIELD})
    if bad is not None:
        raise SignatureError(
            f"The report holds a non-finite number at {bad!r}; it cannot be signed or "
            "verified. HINT: privacy-gate writes such figures as null; run a new audit."
        )
    try:
        return canonical_json(report, exclude=(SIGNATURE_FIELD,))
    except (TypeError, ValueError) as exc:
        raise SignatureError(
            f"The report has no canonical JSON form ({exc}); it cannot be signed or verified."
        ) from None


def sign_report(
    report: Mapping[str, Any],
    private_key: Ed25519PrivateKey,
    *,
    run_id: str | None,
    model_sha256: str | None,
    model_files: ModelFiles | None = None,
    record_nulls: bool = True,
) -> dict[str, Any]:
    """A signed copy of ``report`` (the input is not changed).

    ``audit.run_id``, ``audit.model_sha256`` and ``audit.model_files`` (the manifest of the
    logged model's bytes, `privacy_gate.model_files`) are set first so they are signed with
    the rest; None keeps the value already in the report (or records null; with
    ``record_nulls=False`` a key the report lacks stays absent, so the signed file has the
    report's own content, as the report file written on disk must). A previous signature
    is replaced. Figures that are not finite are signed as null, as written.
    """
    if run_id is not None and (not isinstance(run_id, str) or not run_id.strip()):
        raise InputError(f"The 'run_id' of sign_report must be a non-empty string. Got {run_id!r}.")
    if model_sha256 is not None:
        digest = model_sha256.lower() if isinstance(model_sha256, str) else model_sha256
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise InputError(
                "The 'model_sha256' of sign_report must be 64 hexadecimal digits (a SHA-256 "
                f"of the model's weights). Got {model_sha256!r} instead."
            )
        model_sha256 = digest
    audit = report.get("audit")
    if not isinstance(audit, Mapping):
        raise ReportError(
            "The report has no 'audit' section to sign. HINT: sign a report written by "
            "'privacy-gate score' or 'privacy-gate audit'."
        )
    body = {k: v for k, v in report.items() if k != SIGNATURE_FIELD}  # shallow: not mutated
    body["audit"] = dict(audit)
    for name, value in (("run_id", run_id), ("model_sha256", model_sha256)):
        if value is not None or record_nulls or name in audit:
            body["audit"][name] = value if value is not None else audit.get(name)
    if model_files is not None:
        body["audit"]["model_files"] = model_files.to_dict()
    try:  # plain JSON values; a NaN figure is signed as the null it is written as
        body = json.loads(canonical_json(body, exclude=()))
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"The report has no canonical JSON form ({exc}).") from None
    message = _signed_bytes(body)
    signed: dict[str, Any] = json.loads(message)  # exactly what was signed, plain JSON types
    signed[SIGNATURE_FIELD] = {
        "algorithm": ALGORITHM,
        "public_key_sha256": public_key_fingerprint(private_key),
        "value": base64.b64encode(private_key.sign(message)).decode("ascii"),
    }
    return signed


def verify_report(report: Mapping[str, Any], public_key: Ed25519PublicKey) -> None:
    """Raise `SignatureError` unless ``report`` carries a valid signature by ``public_key``."""
    signature = report.get(SIGNATURE_FIELD)
    if signature is None:
        raise SignatureError(
            "The report is unsigned: nothing shows that the auditing side wrote it. HINT: "
            "audit with PRIVACY_GATE_SIGNING_KEY set (the report file and its MLflow copy are "
            "then signed), or sign this file on the auditing side with 'privacy-gate keys "
            "sign'."
        )
    if not isinstance(signature, Mapping):
        raise SignatureError("The report's 'signature' field is malformed (not an object).")
    algorithm = signature.get("algorithm")
    if algorithm != ALGORITHM:
        raise SignatureError(
            f"The report's signature algorithm is {algorithm!r}; only {ALGORITHM!r} is accepted."
        )
    expected = public_key_fingerprint(public_key)
    claimed = signature.get("public_key_sha256")
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed, expected):
        raise SignatureError(
            f"The report was signed by another key (public_key_sha256 {claimed!r}, expected "
            f"{expected!r}). HINT: verify with the auditing side's public key, or re-sign."
        )
    value = signature.get("value")
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _SIGNATURE_BYTES:
        raise SignatureError("The report's signature value is malformed (not 64 base64 bytes).")
    try:
        public_key.verify(raw, _signed_bytes(report))
    except InvalidSignature:
        raise SignatureError(
            "The report's signature does not match its content: it was changed after signing."
        ) from None


def report_is_signed_by(report: Mapping[str, Any], public_key: Ed25519PublicKey) -> bool:
    """True when ``report`` carries a valid signature by ``public_key``."""
    try:
        verify_report(report, public_key)
    except SignatureError:
        return False
    return True
