"""Is this HTTP request a genuine, fresh MLflow webhook delivery? Pure: no MLflow import.

MLflow signs each delivery (``mlflow.webhooks.delivery``, the Standard Webhooks scheme):
``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")>``
with ``X-MLflow-Timestamp`` (Unix seconds, when it was sent) and ``X-MLflow-Delivery-Id``
(a fresh UUID per delivery, the same on MLflow's own retries). `check_delivery` refuses an
unsigned, forged, altered, stale or future delivery; replays of a delivery id are refused by
the receiver's state (`privacy_gate.mlflow.webhook_state`), which only a delivery that
passed this check may enter. `parse_event` reads the envelope strictly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = [
    "DELIVERY_ID_HEADER",
    "MAX_BODY_BYTES",
    "MIN_SECRET_LENGTH",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Delivery",
    "DeliveryRefused",
    "Event",
    "Refusal",
    "check_delivery",
    "check_secret",
    "parse_event",
    "sign_delivery",
]

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
MAX_BODY_BYTES = 1024 * 1024
"""A larger delivery is refused unread (MLflow's registry payloads are a few hundred bytes)."""
MIN_SECRET_LENGTH = 32
_DELIVERY_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")


class Refusal(Enum):
    """Why a delivery is refused."""

    UNSIGNED = "unsigned"
    FORGED = "forged"
    STALE = "stale"
    REPLAYED = "replayed"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"

    @property
    def status(self) -> int:
        """The HTTP status of the answer (4xx: MLflow does not retry these)."""
        return _STATUS[self]


_STATUS = {
    Refusal.UNSIGNED: 401,
    Refusal.FORGED: 401,
    Refusal.STALE: 401,
    Refusal.REPLAYED: 409,
    Refusal.MALFORMED: 400,
    Refusal.TOO_LARGE: 413,
}


class DeliveryRefused(Exception):
    """A delivery that is not processed: the kind of refusal and a one-line reason."""

    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """A delivery whose signature and timestamp held."""

    delivery_id: str
    timestamp: int
    body: bytes


def check_secret(secret: str, *, name: str) -> str:
    """The shared secret, refused when it is too short to resist guessing.

    >>> check_secret("x" * 32, name="PRIVACY_GATE_WEBHOOK_SECRET") == "x" * 32
    True
    """
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"The webhook secret in {name} must be at least {MIN_SECRET_LENGTH} characters. "
            f"Got {len(secret)} characters instead. HINT: generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))' and keep it in a "
            "secret store, never in a committed file."
        )
    return secret


def sign_delivery(secret: str, delivery_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow sends for this delivery (tests, benchmarks).

    >>> sign_delivery("s" * 32, "d-1", 1700000000, b"{}")[:3]
    'v1,'
    """
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def check_delivery(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str,
    now: float,
    max_age_s: float,
) -> Delivery:
    """The delivery, when it is signed with ``secret`` and sent within ``max_age_s`` of
    ``now`` (either side: a clock ahead is as suspect as one behind).

    Raises:
        DeliveryRefused: unsigned, forged or altered (the signature does not match the
            id, timestamp and body), stale or from the future, or malformed headers.
    """
    if len(body) > MAX_BODY_BYTES:
        raise DeliveryRefused(Refusal.TOO_LARGE, f"the delivery is over {MAX_BODY_BYTES} bytes")
    signature = _header(headers, SIGNATURE_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    delivery_id = _header(headers, DELIVERY_ID_HEADER)
    missing = [
        name
        for name, value in (
            (SIGNATURE_HEADER, signature),
            (TIMESTAMP_HEADER, timestamp),
            (DELIVERY_ID_HEADER, delivery_id),
        )
        if not value
    ]
    if missing:
        raise DeliveryRefused(
            Refusal.UNSIGNED,
            f"unsigned delivery: no {', '.join(missing)} header. HINT: register the webhook "
            "with a secret ('privacy-gate webhook register')",
        )
    assert signature is not None and timestamp is not None and delivery_id is not None
    if not _DELIVERY_ID.fullmatch(delivery_id):
        raise DeliveryRefused(Refusal.MALFORMED, f"the {DELIVERY_ID_HEADER} header is malformed")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise DeliveryRefused(Refusal.MALFORMED, f"the {TIMESTAMP_HEADER} header is malformed")
    expected = sign_delivery(secret, delivery_id, timestamp, body).encode("ascii")
    # Standard Webhooks allows several space-separated signatures (key rotation).
    offered = [s.encode("ascii", "replace") for s in signature.split() if s]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        if not any(s.startswith(b"v1,") and _is_base64(s[3:]) for s in offered):
            raise DeliveryRefused(Refusal.MALFORMED, f"the {SIGNATURE_HEADER} header is malformed")
        raise DeliveryRefused(
            Refusal.FORGED, "the signature does not match this delivery (forged or altered)"
        )
    sent = int(timestamp)
    if abs(now - sent) > max_age_s:
        raise DeliveryRefused(
            Refusal.STALE,
            f"the delivery was sent {now - sent:.0f} s from now, outside the "
            f"{max_age_s:.0f} s window (a replay, or a clock that is off)",
        )
    return Delivery(delivery_id, sent, body)


def _is_base64(raw: bytes) -> bool:
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Event:
    """A delivery's envelope: ``entity.action``, when MLflow sent it, and its data.

    Only the fields the receiver acts on are kept, each validated.
    """

    name: str
    sent_at: str
    model: str | None
    version: str | None
    alias: str | None
    tag_key: str | None

    @property
    def model_version(self) -> tuple[str, str] | None:
        if self.model is None or self.version is None:
            return None
        return self.model, self.version


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 1000:
        raise DeliveryRefused(Refusal.MALFORMED, f"the event's data.{key} is not a name")
    return value


def parse_event(body: bytes) -> Event:
    """The envelope ``{"entity", "action", "timestamp", "data"}`` of a checked delivery.

    >>> parse_event(b'{"entity": "model_version_alias", "action": "created", '
    ...     b'"timestamp": "2026-01-01T00:00:00+00:00", '
    ...     b'"data": {"name": "m", "alias": "champion", "version": "3"}}').version
    '3'
    """
    try:
        envelope = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DeliveryRefused(Refusal.MALFORMED, "the delivery is not JSON") from None
    except RecursionError:
        raise DeliveryRefused(
            Refusal.MALFORMED, "the delivery's JSON is nested too deeply to be an MLflow event"
        ) from None
    if not isinstance(envelope, dict):
        raise DeliveryRefused(Refusal.MALFORMED, "the delivery is not a JSON object")
    entity, action = envelope.get("entity"), envelope.get("action")
    sent_at, data = envelope.get("timestamp", ""), envelope.get("data")
    if not isinstance(entity, str) or not isinstance(action, str) or not isinstance(data, dict):
        raise DeliveryRefused(
            Refusal.MALFORMED, "the delivery has no entity, action and data object"
        )
    if not isinstance(sent_at, str) or len(sent_at) > 64:
        raise DeliveryRefused(Refusal.MALFORMED, "the delivery's timestamp is not a string")
    version = data.get("version")
    if version is not None and (not isinstance(version, str) or not _VERSION.fullmatch(version)):
        raise DeliveryRefused(Refusal.MALFORMED, "the event's data.version is not a number")
    return Event(
        name=f"{entity}.{action}"[:100],
        sent_at=sent_at,
        model=_optional_text(data, "name"),
        version=version,
        alias=_optional_text(data, "alias"),
        tag_key=_optional_text(data, "key"),
    )
