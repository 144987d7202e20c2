"""``privacy-gate keys``: generate, fingerprint, sign and verify audit signing keys."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from privacy_gate import signing
from privacy_gate.errors import InputError, ReportError
from privacy_gate.report import load_report, parse_report_json, write_json
from privacy_gate.verified import verify_signed


def add_keys_commands(commands: Any) -> None:
    keys_cmd = commands.add_parser(
        "keys",
        help="Ed25519 keys that sign audits (generate, fingerprint, sign, verify)",
        description=(
            "The auditing side signs reports with the private key; verifiers hold only the "
            f"public key. Environment: {signing.SIGNING_KEY_ENVIRONMENT_VARIABLE} (private "
            f"key path), {signing.PASSPHRASE_ENVIRONMENT_VARIABLE} (its passphrase), "
            f"{signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE} (public key path)."
        ),
    )
    keys = keys_cmd.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    generate = keys.add_parser(
        "generate",
        help="write a new key pair (private key mode 0600; encrypted when "
        f"{signing.PASSPHRASE_ENVIRONMENT_VARIABLE} is set)",
    )
    generate.add_argument("--private", required=True, type=Path, help="private key PEM to write")
    generate.add_argument("--public", required=True, type=Path, help="public key PEM to write")
    generate.add_argument("--force", action="store_true", help="overwrite existing key files")
    fingerprint = keys.add_parser("fingerprint", help="print a key's public_key_sha256")
    fingerprint.add_argument("key", type=Path, help="public (or private) key PEM")
    sign = keys.add_parser("sign", help="sign a report.json with the private key")
    sign.add_argument("report", type=Path, help="report.json")
    sign.add_argument(
        "--key",
        type=Path,
        help=f"private key PEM (default: ${signing.SIGNING_KEY_ENVIRONMENT_VARIABLE})",
    )
    sign.add_argument("--run-id", help="id of the run that trained the audited model")
    sign.add_argument("--model-sha256", help="SHA-256 of the audited model's weights")
    sign.add_argument("--out", type=Path, help="signed report to write (default: in place)")
    verify = keys.add_parser(
        "verify", help="verify a report's signature (exit 0 valid, 1 invalid or unsigned)"
    )
    verify.add_argument("report", type=Path, help="report.json")
    verify.add_argument(
        "--public-key",
        type=Path,
        help=f"public key PEM (default: ${signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE})",
    )
    keys_cmd.set_defaults(handler=run_keys)


def _read_report_object(path: Path) -> dict[str, Any]:
    """Any JSON object: a report with a section removed is a bad signature (1), not unreadable."""
    try:
        report = parse_report_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"Cannot read the report {str(path)!r}: {exc.strerror}.") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, NaN
        raise InputError(f"The report {str(path)!r} is not valid JSON: {exc}.") from None
    if not isinstance(report, dict):
        raise InputError(f"The report {str(path)!r} must be a JSON object.")
    return report


def run_keys(args: argparse.Namespace) -> int:
    """``privacy-gate keys ...``: 0 done/valid, 1 invalid or unsigned, 2 error (raised)."""
    passphrase = signing.passphrase_from_environment()
    if args.keys_command == "generate":
        digest = signing.write_keypair(
            args.private, args.public, passphrase=passphrase, overwrite=args.force
        )
        if not args.quiet:
            print(
                f"Wrote {args.private} (private, mode 0600, "
                f"{'encrypted' if passphrase else 'NOT encrypted'}) and {args.public} "
                f"(public). public_key_sha256 {digest}"
            )
        return 0
    if args.keys_command == "fingerprint":
        head = args.key.read_bytes()[:4096] if args.key.is_file() else b""
        key = (
            signing.load_private_key(args.key, passphrase)
            if b"PRIVATE KEY-----" in head
            else signing.load_public_key(args.key)
        )
        print(signing.public_key_fingerprint(key))
        return 0
    if args.keys_command == "sign":
        private_key = (
            signing.load_private_key(args.key, passphrase)
            if args.key is not None
            else signing.signing_key_from_environment()
        )
        if private_key is None:
            raise InputError(
                f"No signing key: pass --key or set {signing.SIGNING_KEY_ENVIRONMENT_VARIABLE}."
            )
        signed = signing.sign_report(
            load_report(args.report),
            private_key,
            run_id=args.run_id,
            model_sha256=args.model_sha256,
        )
        out = args.out or args.report
        write_json(signed, out)
        if not args.quiet:
            print(f"Signed {out} (public_key_sha256 {signed['signature']['public_key_sha256']}).")
        return 0
    public_key = (
        signing.load_public_key(args.public_key)
        if args.public_key is not None
        else signing.public_key_from_environment()
    )
    if public_key is None:
        raise InputError(
            f"No public key: pass --public-key or set {signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE}."
        )
    report = _read_report_object(args.report)
    try:
        verified = verify_signed(report, public_key)  # what the registry gate reads too
    except signing.SignatureError as exc:
        print(f"privacy-gate: INVALID signature: {exc}")
        return 1
    except ReportError as exc:  # signed, but no audit the gate can use (outdated schema too)
        print(f"privacy-gate: VALID signature, but not a usable audit: {exc}")
        return 1
    audit = verified.report.audit
    print(
        f"privacy-gate: VALID signature by {verified.key_fingerprint} "
        f"(run_id {audit.run_id}, model_sha256 {audit.model_sha256}, "
        f"status {verified.report.decision.status.value})"
    )
    return 0
