"""``privacy-gate promote``: set a registered model version's alias only for a genuine,
passing audit."""

from __future__ import annotations

import argparse
from typing import Any

from privacy_gate.cli.common import add_registry_options, registry_client


def add_promote_command(commands: Any) -> None:
    promote_cmd = commands.add_parser(
        "promote",
        help="set a registered model version's alias if its signed audit passes "
        "(exit 0 promoted, 1 refused, 2 error)",
        description=(
            "Verify the version's signed audit (signature, status, this version's run, "
            "exactly these model files, the policy) and only then set the alias. Needs the "
            "mlflow package."
        ),
    )
    promote_cmd.add_argument("--model", required=True, help="registered model name")
    promote_cmd.add_argument("--version", required=True, help="model version")
    promote_cmd.add_argument("--alias", required=True, help="alias to set, e.g. champion")
    promote_cmd.add_argument(
        "--policy-sha256", help="require the audit to have used this policy digest"
    )
    add_registry_options(promote_cmd)
    promote_cmd.set_defaults(handler=run_promote)


def run_promote(args: argparse.Namespace) -> int:
    """``privacy-gate promote``: 0 promoted, 1 refused, 2 error (raised)."""
    from privacy_gate.mlflow.promote import promote  # imports mlflow lazily
    from privacy_gate.mlflow.remedies import refusal_message

    client, public_key = registry_client(args, "promote")
    result = promote(
        args.model,
        args.version,
        args.alias,
        public_key=public_key,
        policy_sha256=args.policy_sha256,
        client=client,
        allow_pickle=args.allow_pickle_models,
    )
    where = f"{args.model!r} version {args.version}"
    if result.allowed:
        print(f"privacy-gate: PROMOTED {where} to alias {args.alias!r}.")
        return 0
    print(
        refusal_message(
            f"privacy-gate: REFUSED to promote {where} to alias {args.alias!r}",
            result.reasons,
            result.report,
            result.run_id,
            details=[f"  FAIL {v.rule}: {v.message}" for v in result.violations],
        )
    )
    return 1
