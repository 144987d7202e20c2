"""Command line: ``privacy-gate score|check|diff|audit|policy|keys|promote|verify|webhook``.

Exit codes: 0 pass, 1 gate failed (an under-powered or missing audit included),
2 error (bad input, bad config, any exception). ``promote``: 0 promoted, 1 refused, 2 error
(server unreachable, model or version not found, bad key); ``verify``: 0 the served files
are the audited ones, 1 not, 2 error. Errors print one line naming
the problem; ``--debug`` adds the traceback.

GitHub mode (``--github``, on by itself when ``GITHUB_ACTIONS=true``): ``score``, ``check``
and ``audit`` also write a job summary, annotations and step outputs
(`privacy_gate.github`), for a pass, a failed gate and an error alike.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from privacy_gate import github
from privacy_gate._version import __version__
from privacy_gate.cli.check import add_check_command
from privacy_gate.cli.common import EXIT_ERROR, GATE_COMMANDS, add_github_option
from privacy_gate.cli.diff import add_diff_command
from privacy_gate.cli.keys import add_keys_commands
from privacy_gate.cli.promote import add_promote_command
from privacy_gate.cli.recommend import add_recommend_command
from privacy_gate.cli.score_audit import add_audit_command, add_score_command
from privacy_gate.cli.verify import add_verify_command
from privacy_gate.cli.webhook import add_webhook_commands
from privacy_gate.config import default_config, default_policy_text
from privacy_gate.errors import PrivacyGateError
from privacy_gate.gate import Status
from privacy_gate.report import REPORT_FILE

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    """One sub-command per command group; each sets its own ``handler``."""
    parser = argparse.ArgumentParser(
        prog="privacy-gate",
        description="Patient-level membership-inference audit and release gate.",
        epilog="Exit codes: 0 pass, 1 gate failed, 2 error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the verdict")
    add_github_option(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_score_command(commands)
    add_check_command(commands)
    add_diff_command(commands)
    add_audit_command(commands)
    policy = commands.add_parser("policy", help="print the packaged default policy and its hash")
    policy.set_defaults(handler=_policy)
    add_recommend_command(commands)
    add_keys_commands(commands)
    add_promote_command(commands)
    add_verify_command(commands)
    add_webhook_commands(commands)
    return parser


def _policy(_: argparse.Namespace) -> int:
    print(default_policy_text(), end="")
    print(f"# policy_sha256: {default_config().sha256()}")
    return 0


def _error_to_github(args: argparse.Namespace, message: str) -> None:
    """GitHub mode: an error is a failed check with its own summary, annotation and outputs."""
    if args.command not in GATE_COMMANDS or not github.enabled(args.github):
        return
    path = getattr(args, "report", None) if args.command == "check" else getattr(args, "out", None)
    if path is not None and args.command != "check":
        path = Path(path) / REPORT_FILE
    try:
        github.write_github(
            github.Outcome(
                status=Status.ERROR,
                error=message,
                report_path=None if path is None else str(path),
            )
        )
    except OSError as exc:
        print(
            f"privacy-gate: cannot write the GitHub job summary or outputs: {exc}", file=sys.stderr
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privacy-gate`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except (PrivacyGateError, OSError, ValueError, KeyError, MemoryError) as exc:
        if args.debug:
            traceback.print_exc()
        kind = "error" if isinstance(exc, PrivacyGateError) else type(exc).__name__
        print(f"privacy-gate: ERROR ({kind}): {exc}", file=sys.stderr)
        _error_to_github(args, f"{exc}")
        return EXIT_ERROR
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(
            f"privacy-gate: ERROR (unexpected {type(exc).__name__}): {exc}. HINT: re-run "
            "with --debug and report the traceback.",
            file=sys.stderr,
        )
        _error_to_github(args, f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_ERROR
