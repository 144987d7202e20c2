"""The webhook receiver as an ASGI app (Starlette, run by uvicorn: both come with MLflow).

``POST /webhook`` takes MLflow's deliveries: a delivery is refused with a 4xx and the
reason (never processed) when it is unsigned, forged, altered, stale, malformed or a replay
of a delivery id already taken (`privacy_gate.mlflow.webhook_signature`,
`privacy_gate.mlflow.webhook_state`); a genuine one is processed at once
(`privacy_gate.mlflow.webhook_reactor`) and answered 200 with the outcome. When the
registry cannot be asked, the delivery id is released and the answer is 503, which MLflow
retries. ``GET /health`` says whether the start-up reconciliation has run, and how many
deliveries are being processed or wait for their turn (``in_flight``).

On start-up, and then every ``reconcile_interval_s`` (0: never again), every protected alias
and every version in a protected stage is verified again, files included: one set while the
receiver was down (or whose delivery MLflow gave up on), a stage transition (no event) or
files overwritten in place (no event) are found then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy_gate.errors import InputError
from privacy_gate.mlflow.registry_settings import GateSettings
from privacy_gate.mlflow.webhook_reactor import URGENT, Reactor, Revert
from privacy_gate.mlflow.webhook_signature import (
    MAX_BODY_BYTES,
    DeliveryRefused,
    Refusal,
    check_delivery,
    parse_event,
)
from privacy_gate.mlflow.webhook_state import WebhookState

__all__ = ["Receiver", "ReceiverConfig", "create_app", "notify_revert", "serve"]

_LOG = logging.getLogger(__name__)
REVERT_LOG = "privacy-gate webhook receiver reverted: %s"
"""The ERROR log line of each revert (for operators; alerting can match it)."""
NOTIFY_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 10.0
"""A delivery whose body has not arrived by then is refused (408)."""
SERVER_LIMITS: dict[str, Any] = {"limit_concurrency": 32, "timeout_keep_alive": 5}
"""uvicorn's: connections and tasks at once (more are answered 503, which MLflow retries)
and seconds an idle keep-alive connection stays open."""
RETRY_RECONCILE_S = 10.0


@dataclass(frozen=True)
class ReceiverConfig:
    """What ``privacy-gate webhook serve`` validated (`privacy_gate.cli.webhook`). The
    secret and the notification URL (a Slack URL is a credential) stay out of its repr."""

    tracking_uri: str
    secret: str = field(repr=False)
    state_dir: Path
    settings: GateSettings
    max_age_s: float = 300.0
    notify_url: str | None = field(default=None, repr=False)
    reconcile_interval_s: float = 300.0


def redacted_url(url: str) -> str:
    """Where ``url`` points without its path, query or credentials (a webhook URL's path
    is its secret).

    >>> redacted_url("https://hooks.slack.com/services/T0/B0/XyZ")
    'https://hooks.slack.com/...'
    """
    parsed = urllib.parse.urlsplit(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.hostname or '?'}{port}/..."


def _without(text: str, url: str) -> str:
    """``text`` (an exception's message) with ``url``, and its path, redacted."""
    parsed = urllib.parse.urlsplit(url)
    secret_parts = [url, parsed.path + (f"?{parsed.query}" if parsed.query else ""), parsed.path]
    for part in secret_parts:
        if len(part) > 1:
            text = text.replace(part, redacted_url(url) if part == url else "/...")
    return text


def _slack_escaped(text: str) -> str:
    """Slack's escaping of a ``text`` (``&``, ``<`` and ``>``): names from the registry
    cannot make links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def notification(revert: Revert) -> dict[str, Any]:
    """The JSON posted for a revert (Slack-compatible ``text``, escaped)."""
    return {
        "text": _slack_escaped(revert.message),
        "model": revert.model,
        "alias": revert.alias,
        "version": str(revert.version),
        "restored_version": None if revert.restored is None else str(revert.restored),
        "reasons": revert.reasons,
    }


def notify_revert(revert: Revert, url: str | None) -> threading.Thread | None:
    """The ERROR log line, and a POST to ``url`` in the background (the thread); a
    notification that fails is logged (the URL redacted), never retried into the registry."""
    _LOG.error(REVERT_LOG, revert.message)
    if not url:
        return None
    payload = notification(revert)

    def send() -> None:
        import requests

        try:
            requests.post(url, json=payload, timeout=NOTIFY_TIMEOUT_S).raise_for_status()
        except Exception as exc:
            reason = _without(f"{type(exc).__name__}: {exc}", url)
            _LOG.error("cannot send the notification to %s: %s", redacted_url(url), reason)

    thread = threading.Thread(target=send, name="privacy-gate-notify", daemon=True)
    thread.start()
    return thread


class Receiver:
    """Checks each delivery, then hands it to the `Reactor` under one lock."""

    def __init__(self, config: ReceiverConfig, *, client: Any) -> None:
        self.config = config
        self.state = WebhookState(config.state_dir)
        self.reactor = Reactor(
            client=client,
            tracking_uri=config.tracking_uri,
            settings=config.settings,
            state=self.state,
            notify=self._notify,
        )
        self.reconciled = threading.Event()
        self._stop = threading.Event()
        self._counting = threading.Lock()
        self.in_flight = 0  # deliveries received and not yet answered

    def _notify(self, revert: Revert) -> None:
        notify_revert(revert, self.config.notify_url)

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        """(HTTP status, JSON body) for one delivery."""
        with self._counting:
            self.in_flight += 1
        try:
            return self._receive(headers, body)
        finally:
            with self._counting:
                self.in_flight -= 1

    def _receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, str]]:
        now = time.time()
        try:
            delivery = check_delivery(
                headers, body, secret=self.config.secret, now=now, max_age_s=self.config.max_age_s
            )
            event = parse_event(delivery.body)
            with self.reactor.lock.hold(urgent=event.name in URGENT):
                # Ids are kept twice the window: an older one is refused by its timestamp.
                keep = 2 * self.config.max_age_s
                if not self.state.claim_delivery(delivery.delivery_id, now=now, keep_s=keep):
                    raise DeliveryRefused(
                        Refusal.REPLAYED,
                        f"delivery {delivery.delivery_id} was already received (a replay)",
                    )
                try:
                    outcome = self.reactor.handle(event, _event_time(event.sent_at, now))
                except DeliveryRefused:
                    raise
                except Exception as exc:
                    self.state.release_delivery(delivery.delivery_id)
                    _LOG.error("delivery %s not processed: %s", delivery.delivery_id, exc)
                    return 503, {"error": f"the registry could not be asked: {str(exc)[:300]}"}
        except DeliveryRefused as refused:
            _LOG.warning("refused a delivery (%s): %s", refused.kind.value, refused.reason)
            return refused.kind.status, {"refused": refused.kind.value, "reason": refused.reason}
        _LOG.info("%s %s: %s", event.name, delivery.delivery_id, outcome)
        return 200, {"event": event.name, "outcome": outcome}

    def reconcile_loop(self) -> None:
        """Reconcile at start (again after a failure), then every interval when set."""
        while not self._stop.is_set():
            try:
                with self.reactor.lock.hold(urgent=False):
                    outcomes = self.reactor.reconcile_all()
            except Exception as exc:
                _LOG.error("reconciliation failed (retried in %.0f s): %s", RETRY_RECONCILE_S, exc)
                self._stop.wait(RETRY_RECONCILE_S)
                continue
            _LOG.warning("reconciled %d protected alias(es): %s", len(outcomes), outcomes)
            self.reconciled.set()
            if self.config.reconcile_interval_s <= 0:
                return
            self._stop.wait(self.config.reconcile_interval_s)

    def stop(self) -> None:
        self._stop.set()


def _event_time(sent_at: str, default: float) -> float:
    """MLflow's ISO event time in Unix seconds (the receiver's clock when unreadable)."""
    from datetime import datetime, timezone

    try:
        parsed = datetime.fromisoformat(sent_at)
    except ValueError:
        return default
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def create_app(receiver: Receiver) -> Any:
    """The Starlette app (the framework under FastAPI) around ``receiver``; start-up
    reconciliation runs in a thread (deliveries wait for it on the receiver's lock)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        thread = threading.Thread(
            target=receiver.reconcile_loop, name="privacy-gate-reconcile", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            receiver.stop()

    def refused(kind: Refusal, reason: str, status: int | None = None) -> JSONResponse:
        return JSONResponse(
            {"refused": kind.value, "reason": reason}, status_code=status or kind.status
        )

    async def read_body(request: Request) -> bytes | None:
        """The body, read up to `MAX_BODY_BYTES` (None as soon as it is longer)."""
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return None
        return bytes(body)

    async def webhook(request: Request) -> JSONResponse:
        # Transfer-Encoding overrides Content-Length (h11 reads such a body chunked, of any
        # size): refused unread, as is any body without a Content-Length.
        if "transfer-encoding" in request.headers:
            return refused(
                Refusal.MALFORMED,
                "a Transfer-Encoding is not accepted. HINT: send the body with a Content-Length",
                411,
            )
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            return refused(Refusal.MALFORMED, "no Content-Length", 411)
        if int(declared) > MAX_BODY_BYTES:
            return refused(Refusal.TOO_LARGE, f"over {MAX_BODY_BYTES} bytes")
        try:
            body = await asyncio.wait_for(read_body(request), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            reason = f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s"
            return refused(Refusal.MALFORMED, reason, 408)
        if body is None:
            return refused(Refusal.TOO_LARGE, f"over {MAX_BODY_BYTES} bytes")
        status, answer = await run_in_threadpool(receiver.receive, dict(request.headers), body)
        return JSONResponse(answer, status_code=status)

    async def health(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "ok": True,
                "reconciled": receiver.reconciled.is_set(),
                "in_flight": receiver.in_flight,
            }
        )

    routes = [
        Route("/webhook", webhook, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(config: ReceiverConfig, *, host: str, port: int) -> None:
    """Run the receiver with uvicorn (one process: the state and the lock are its own)
    until it is stopped."""
    try:
        import mlflow
        import uvicorn
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise InputError(
            "'privacy-gate webhook serve' needs mlflow. HINT: pip install 'privacy-gate[mlflow]'."
        ) from None
    mlflow.set_tracking_uri(config.tracking_uri)  # artifact downloads resolve through it
    from privacy_gate.mlflow._compat import prompt_blind_registry_client

    client = prompt_blind_registry_client(MlflowClient(tracking_uri=config.tracking_uri))
    receiver = Receiver(config, client=client)
    uvicorn.run(create_app(receiver), host=host, port=port, log_level="warning", **SERVER_LIMITS)
