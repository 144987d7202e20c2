"""``privacy-gate verify models:/NAME@ALIAS``: are the files served now the audited ones?"""

from __future__ import annotations

import argparse
from typing import Any

from privacy_gate.cli.common import add_registry_options, registry_client


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
    add_registry_options(verify_cmd)
    verify_cmd.add_argument(
        "--no-revoke",
        dest="revoke",
        action="store_false",
        help="only report changed files; do not take the alias away",
    )
    verify_cmd.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    """0 verified, 1 not (the differing files named), 2 error (raised)."""
    from privacy_gate.mlflow.consume import parse_model_uri, verify_model

    parse_model_uri(args.model_uri)  # a bad URI is an error before any request
    client, public_key = registry_client(args, "verify")
    result = verify_model(
        args.model_uri,
        public_key=public_key,
        client=client,
        revoke=args.revoke,
        allow_pickle=args.allow_pickle_models,
    )
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
