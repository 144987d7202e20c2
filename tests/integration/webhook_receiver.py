"""The webhook receiver as a real process beside a real ``mlflow server`` with webhooks on.

- `WEBHOOK_SERVER_ENV`: what a local ``mlflow server`` needs to deliver webhooks to a
  receiver on 127.0.0.1 (http, private addresses, a fixed secret-encryption key, no cache of
  the webhook list, no retries: a delivery to a stopped receiver is lost, so only the
  receiver's start-up reconciliation can repair what happened while it was down).
- `start_receiver`: ``python -m privacy_gate webhook serve`` on a free port; waits until its
  start-up reconciliation has run; `ReceiverProcess.kill` stops it hard (SIGKILL).
- `deliver`: a delivery signed as MLflow signs it (or forged, stale, unsigned), sent to the
  receiver; for the tests of refusals, duplicates and order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
from mlflow_server import free_port

from privacy_gate.mlflow.webhook_signature import sign_delivery

SECRET = "test-secret-" + "s" * 32
WEBHOOK_SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "k6IHCBOpESV0MSZTpzIVkDk1ujwFPVh7oNQlEqkKJ8k=",
    "MLFLOW_WEBHOOK_CACHE_TTL": "0",
    "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "0",
}
START_TIMEOUT_S = 90.0


@dataclass
class ReceiverProcess:
    url: str
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhook"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, as far as the receiver can tell)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def receiver_env(public_key: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PRIVACY_GATE_WEBHOOK_SECRET": SECRET,
        "PRIVACY_GATE_PUBLIC_KEY": str(public_key),
        "PRIVACY_GATE_PROTECTED_ALIASES": "champion, production",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }


@contextlib.contextmanager
def start_receiver(
    directory: Path,
    *,
    tracking_uri: str,
    public_key: Path,
    notify_url: str | None = None,
    port: int | None = None,
) -> Iterator[ReceiverProcess]:
    """``privacy-gate webhook serve`` with its state in ``directory / "state"``; yields once
    its start-up reconciliation is done; killed after."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = directory / "receiver.log"
    command = [
        sys.executable, "-m", "privacy_gate", "webhook", "serve",
        "--tracking-uri", tracking_uri, "--state-dir", str(directory / "state"),
        "--port", str(port), "--max-age", "60",
    ]  # fmt: skip
    env = receiver_env(public_key)
    if notify_url:
        env["PRIVACY_GATE_WEBHOOK_NOTIFY_URL"] = notify_url
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    receiver = ReceiverProcess(f"http://127.0.0.1:{port}", directory / "state", log_path, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _reconciled(receiver.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the receiver did not start:\n{receiver.log_text()[-5000:]}")
            time.sleep(0.2)
        yield receiver
    finally:
        receiver.kill()


def _reconciled(url: str) -> bool:
    try:
        return bool(requests.get(f"{url}/health", timeout=2).json().get("reconciled"))
    except (requests.RequestException, ValueError):
        return False


def envelope(event: str, data: Mapping[str, Any], sent_at: datetime | None = None) -> bytes:
    """A delivery's body as MLflow writes it (``json.dumps`` of the envelope)."""
    entity, action = event.split(".")
    when = (sent_at or datetime.now(timezone.utc)).isoformat()
    document = {"entity": entity, "action": action, "timestamp": when, "data": data}
    return json.dumps(document).encode()


def deliver(
    receiver: ReceiverProcess,
    body: bytes,
    *,
    secret: str | None = SECRET,
    delivery_id: str | None = None,
    timestamp: int | None = None,
    signed_body: bytes | None = None,
) -> requests.Response:
    """POST ``body`` with MLflow's headers; signed with ``secret`` (None: unsigned) over
    ``signed_body`` (default: the body itself; another body forges an altered delivery)."""
    delivery_id = delivery_id or str(uuid.uuid4())
    sent = str(timestamp if timestamp is not None else int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": sent,
    }
    if secret is not None:
        headers["X-MLflow-Signature"] = sign_delivery(
            secret, delivery_id, sent, signed_body if signed_body is not None else body
        )
    return requests.post(receiver.webhook_url, data=body, headers=headers, timeout=60)


def wait_for(condition: Any, *, timeout_s: float = 60.0, what: str = "the condition") -> Any:
    """Poll ``condition()`` until it returns a truthy value (returned); fail after the
    timeout, saying what was awaited. A wait, never a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)
