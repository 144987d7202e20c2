"""``privacy-gate webhook serve|register``: the gate on an MLflow server that only takes
webhooks (`privacy_gate.mlflow.webhook_app`). The shared secret is read from the
environment only (``PRIVACY_GATE_WEBHOOK_SECRET``), never from a file or an option, so it
does not end up in a committed file or in the shell history."""

from __future__ import annotations

import argparse
import os
import urllib.parse
from pathlib import Path
from typing import Any

from privacy_gate.cli.common import resolve_tracking_uri
from privacy_gate.errors import InputError
from privacy_gate.signing import PUBLIC_KEY_ENVIRONMENT_VARIABLE

SECRET_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_WEBHOOK_SECRET"
NOTIFY_URL_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_WEBHOOK_NOTIFY_URL"
DEFAULT_NAME = "privacy-gate"
DEFAULT_PORT = 8765
DEFAULT_RECONCILE_INTERVAL_S = 300.0


def add_webhook_commands(commands: Any) -> None:
    webhook = commands.add_parser(
        "webhook",
        help="the gate through MLflow webhooks, for a server without the registry plugin "
        "(reverts a protected alias whose audit does not verify)",
    )
    sub = webhook.add_subparsers(dest="webhook_command", required=True, metavar="ACTION")
    serve = sub.add_parser(
        "serve",
        help="run the webhook receiver",
        description=(
            "Receive MLflow's registry webhooks: verify each delivery's HMAC signature, time "
            "and id; verify the signed audit of a version given a protected alias as the "
            "gated registry store does, and revert the alias when it does not hold. The "
            f"secret comes from ${SECRET_ENVIRONMENT_VARIABLE}, the audit public key from "
            f"--public-key or ${PUBLIC_KEY_ENVIRONMENT_VARIABLE}, the protected aliases from "
            "$PRIVACY_GATE_PROTECTED_ALIASES, the URL each revert is also POSTed to as JSON "
            f"(Slack-compatible 'text'; a credential, so not an option) from "
            f"${NOTIFY_URL_ENVIRONMENT_VARIABLE}; MLflow credentials from MLflow's own "
            "variables."
        ),
    )
    serve.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    serve.add_argument(
        "--state-dir", type=Path, required=True, help="folder of the receiver's state (SQLite)"
    )
    serve.add_argument("--public-key", type=Path, help="audit public key PEM")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    serve.add_argument(
        "--max-age", type=float, default=300.0, help="seconds a delivery stays fresh (10-3600)"
    )
    serve.add_argument(
        "--reconcile-interval",
        type=float,
        default=DEFAULT_RECONCILE_INTERVAL_S,
        help="seconds between full reconciliations after the one at start-up: every "
        "protected alias's holder and every version in Staging/Production verified again, "
        "files included (stage transitions and overwritten files fire no webhook event); "
        f"default {DEFAULT_RECONCILE_INTERVAL_S:g}; 0: none",
    )
    serve.set_defaults(handler=run_serve)
    register = sub.add_parser(
        "register",
        help="create (or update) the webhook on the MLflow server",
        description=(
            f"Create the MLflow webhook named --name (default {DEFAULT_NAME!r}) for the "
            f"receiver at --url, signed with ${SECRET_ENVIRONMENT_VARIABLE}; update it when "
            "it exists. Then MLflow sends it a test delivery (--no-test skips)."
        ),
    )
    register.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    register.add_argument("--url", required=True, help="the receiver's URL, e.g. .../webhook")
    register.add_argument("--name", default=DEFAULT_NAME, help="the webhook's name")
    register.add_argument("--no-test", dest="test", action="store_false", help="no test delivery")
    register.set_defaults(handler=run_register)


def _secret() -> str:
    from privacy_gate.mlflow.webhook_signature import check_secret

    secret = os.environ.get(SECRET_ENVIRONMENT_VARIABLE, "")
    if not secret:
        raise InputError(
            f"The webhook secret must be set in {SECRET_ENVIRONMENT_VARIABLE}. Got nothing. "
            "HINT: export it from your secret store (generate one with python -c 'import "
            "secrets; print(secrets.token_urlsafe(32))'); the receiver and 'webhook "
            "register' need the same value."
        )
    try:
        return check_secret(secret, name=SECRET_ENVIRONMENT_VARIABLE)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _http_url(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(
            f"The '{option}' option must be an http(s) URL. Got {value[:200]!r} instead. "
            "HINT: e.g. https://receiver.example.org/webhook."
        )
    return value


def _notify_url() -> str | None:
    from privacy_gate.mlflow.webhook_app import redacted_url

    value = os.environ.get(NOTIFY_URL_ENVIRONMENT_VARIABLE, "").strip() or None
    if value is None:
        return None
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        shown = redacted_url(value) if parsed.hostname else f"{len(value)} characters"
        raise InputError(
            f"{NOTIFY_URL_ENVIRONMENT_VARIABLE} must be an http(s) URL. Got {shown} "
            "instead. HINT: e.g. a Slack incoming-webhook URL from your secret store, or "
            "unset it for no notifications (the ERROR log line stays)."
        )
    return value


def _writable_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"The '--state-dir' option must be a folder the receiver can write. Got "
            f"{str(path)!r}, which cannot be created ({exc.strerror}). HINT: pass a folder "
            "on persistent storage that survives restarts."
        ) from None
    if not os.access(path, os.W_OK):
        raise InputError(
            f"The '--state-dir' option must be a folder the receiver can write. Got "
            f"{str(path)!r}, which is not writable. HINT: fix its permissions or pass another."
        )


def _in_range(value: float, low: float, high: float, option: str) -> float:
    if not low <= value <= high:
        raise InputError(
            f"The '{option}' option must be between {low:g} and {high:g}. Got {value:g} "
            f"instead. HINT: leave {option} out for its default (see --help)."
        )
    return value


def run_serve(args: argparse.Namespace) -> int:
    """Runs until stopped; 2 on a setting that cannot be used (before anything starts)."""
    from privacy_gate.mlflow.registry_settings import GateSettings

    tracking_uri = resolve_tracking_uri(args, "webhook serve")
    secret = _secret()
    _in_range(float(args.port), 1, 65535, "--port")
    _in_range(args.max_age, 10, 3600, "--max-age")
    _in_range(args.reconcile_interval, 0, 7 * 86400, "--reconcile-interval")
    notify_url = _notify_url()
    _writable_folder(args.state_dir)
    if args.public_key is not None:
        os.environ[PUBLIC_KEY_ENVIRONMENT_VARIABLE] = str(args.public_key)
    settings = GateSettings.from_environment()
    if settings.public_key_problem is not None:
        # The store refuses every promotion without a key; the receiver would revert every
        # protected alias of the registry at start-up, so it does not start.
        raise InputError(
            f"The audit public key cannot be used: {settings.public_key_problem}. HINT: pass "
            f"--public-key PATH or set {PUBLIC_KEY_ENVIRONMENT_VARIABLE} to the auditing "
            "side's public key ('privacy-gate keys')."
        )
    from privacy_gate.mlflow.webhook_app import ReceiverConfig, serve

    config = ReceiverConfig(
        tracking_uri=tracking_uri,
        secret=secret,
        state_dir=args.state_dir,
        settings=settings,
        max_age_s=args.max_age,
        notify_url=notify_url,
        reconcile_interval_s=args.reconcile_interval,
    )
    print(
        f"privacy-gate: webhook receiver for {tracking_uri} on http://{args.host}:{args.port}"
        f"/webhook; {settings.banner(tracking_uri).split(': ', 1)[1]}",
        flush=True,
    )
    serve(config, host=args.host, port=args.port)
    return 0


def run_register(args: argparse.Namespace) -> int:
    """0 registered (and the test delivery answered 2xx); 2 error."""
    tracking_uri = resolve_tracking_uri(args, "webhook register")
    url = str(_http_url(args.url, "--url"))
    secret = _secret()
    from privacy_gate.mlflow.promote import client_for
    from privacy_gate.mlflow.webhook_reactor import EVENTS

    client = client_for(tracking_uri)
    events: list[Any] = list(EVENTS)
    existing = [w for w in _webhooks(client) if w.name == args.name]
    if existing:
        hook = client.update_webhook(
            existing[0].webhook_id, url=url, events=events, secret=secret, status="ACTIVE"
        )
        verb = "updated"
    else:
        hook = client.create_webhook(
            name=args.name,
            url=url,
            events=events,
            description="privacy-gate: reverts protected aliases whose audit does not verify",
            secret=secret,
        )
        verb = "created"
    print(f"privacy-gate: {verb} webhook {hook.webhook_id} ({args.name!r}) -> {url}")
    if args.test:
        result = client.test_webhook(hook.webhook_id)
        if not result.success:
            raise InputError(
                f"The test delivery to {url} failed: {result.response_status} "
                f"{(result.error_message or result.response_body or '')[:300]}. HINT: start "
                "'privacy-gate webhook serve' with the same secret, reachable from the MLflow "
                "server."
            )
        print(f"privacy-gate: test delivery answered {result.response_status}.")
    return 0


def _webhooks(client: Any) -> list[Any]:
    found: list[Any] = []
    token: str | None = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found
