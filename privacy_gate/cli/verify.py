"""``privacy-gate verify models:/NAME@ALIAS``: are the files served now the audited ones?"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from privacy_gate import signing
from privacy_gate.cli.common import resolve_tracking_uri
from privacy_gate.errors import InputError


def add_verify_command(commands: Any) -> None:
    verify_cmd = commands.add_parser(
        "verify",
        help="check that a registered model's served files are the ones its signed audit "
        "names (exit 0 verified, 1 not, 2 error)",
        description=(
            "Download the files served for models:/NAME@ALIAS (or models:/NAME/VERSION), hash "
            "them and compare them with the manifest of the version's signed, passing audit. "
            "Nothing is loaded. When files changed and the URI names an alias, the alias is "
            "asked for again (a gated registry then removes it and records why); "
            "--no-revoke only reports. Needs the mlflow package."
        ),
    )
    verify_cmd.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    verify_cmd.add_argument(
        "--public-key",
        type=Path,
        help=f"public key PEM (default: ${signing.PUBLIC_KEY_ENVIRONMENT_VARIABLE})",
    )
    verify_cmd.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)"
    )
    verify_cmd.add_argument(
        "--no-revoke",
        dest="revoke",
        action="store_false",
        help="only report changed files; do not take the alias away",
    )
    verify_cmd.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    """0 verified, 1 not (the differing files named), 2 error (raised)."""
    tracking_uri = resolve_tracking_uri(args, "verify")
    public_key = signing.load_public_key(args.public_key) if args.public_key else None
    from privacy_gate.mlflow.consume import parse_model_uri, verify_model
    from privacy_gate.mlflow.promote import client_for  # imports mlflow lazily

    parse_model_uri(args.model_uri)  # a bad URI is an error before any request
    try:
        client = client_for(tracking_uri)
    except ImportError:
        raise InputError(
            "'privacy-gate verify' needs the mlflow package. HINT: pip install "
            "'privacy-gate[mlflow]'."
        ) from None
    result = verify_model(args.model_uri, public_key=public_key, client=client, revoke=args.revoke)
    where = f"{args.model_uri} ({result.name!r} version {result.version})"
    if result.ok:
        print(f"privacy-gate: VERIFIED {where}: its files are the audited ones.")
        return 0
    print(f"privacy-gate: NOT VERIFIED {where}:")
    for reason in result.reasons:
        print(f"  - {reason}")
    for line in result.changed_files:
        print(f"  file {line}")
    if result.revoked:
        print(f"  the alias {result.alias!r} was removed from version {result.version}.")
    return 1
