"""The webhook receiver's pure checks: MLflow's delivery signature, freshness, the envelope
(`privacy_gate.mlflow.webhook_signature`), and the replay cache and restore candidates that
survive a restart (`privacy_gate.mlflow.webhook_state`). No MLflow, no server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from privacy_gate.mlflow.webhook_signature import (
    MAX_BODY_BYTES,
    DeliveryRefused,
    Refusal,
    check_delivery,
    check_secret,
    parse_event,
    sign_delivery,
)
from privacy_gate.mlflow.webhook_state import WebhookState

SECRET = "k" * 40
NOW = 1_800_000_000
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2027-01-15T08:00:00.123456+00:00",
        "data": {"name": "m", "alias": "champion", "version": "7"},
    }
).encode()


def _headers(
    body: bytes = BODY, *, secret: str = SECRET, delivery_id: str = "d-1", sent: int = NOW
) -> dict[str, str]:
    return {
        "X-MLflow-Signature": sign_delivery(secret, delivery_id, sent, body),
        "X-MLflow-Timestamp": str(sent),
        "X-MLflow-Delivery-Id": delivery_id,
    }


def _refusal(headers: dict[str, str], body: bytes = BODY, **kwargs: float) -> Refusal:
    with pytest.raises(DeliveryRefused) as caught:
        check_delivery(headers, body, secret=SECRET, now=kwargs.get("now", NOW), max_age_s=300)
    return caught.value.kind


def test_the_signature_is_mlflows_hmac_of_id_timestamp_and_body() -> None:
    # Computed independently, as mlflow.webhooks.delivery documents it.
    digest = hmac.new(SECRET.encode(), f"d-1.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert sign_delivery(SECRET, "d-1", NOW, BODY) == "v1," + base64.b64encode(digest).decode()


def test_a_genuine_fresh_delivery_is_taken() -> None:
    delivery = check_delivery(_headers(), BODY, secret=SECRET, now=NOW + 300, max_age_s=300)
    assert (delivery.delivery_id, delivery.timestamp, delivery.body) == ("d-1", NOW, BODY)
    lowered = {k.lower(): v for k, v in _headers().items()}  # HTTP header names: any case
    assert check_delivery(lowered, BODY, secret=SECRET, now=NOW, max_age_s=300).body == BODY


def test_a_rotated_key_may_send_several_signatures() -> None:
    headers = _headers()
    old = sign_delivery("o" * 40, "d-1", NOW, BODY)
    headers["X-MLflow-Signature"] = f"{old} {headers['X-MLflow-Signature']}"
    assert check_delivery(headers, BODY, secret=SECRET, now=NOW, max_age_s=300).body == BODY


@pytest.mark.parametrize(
    "missing", ["X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"]
)
def test_an_unsigned_delivery_is_refused(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    assert _refusal(headers) is Refusal.UNSIGNED


def test_forged_and_altered_deliveries_are_refused() -> None:
    assert _refusal(_headers(secret="x" * 40)) is Refusal.FORGED
    assert _refusal(_headers(), BODY.replace(b'"7"', b'"8"')) is Refusal.FORGED
    moved = _headers()
    moved["X-MLflow-Delivery-Id"] = "d-2"  # the id is signed: a replay cannot take a new one
    assert _refusal(moved) is Refusal.FORGED
    later = _headers()
    later["X-MLflow-Timestamp"] = str(NOW + 1)  # so is the time: it cannot be refreshed
    assert _refusal(later) is Refusal.FORGED


def test_stale_and_future_deliveries_are_refused() -> None:
    assert _refusal(_headers(), now=NOW + 301) is Refusal.STALE
    assert _refusal(_headers(), now=NOW - 301) is Refusal.STALE


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-MLflow-Signature", "v1,not base64!"),
        ("X-MLflow-Timestamp", "soon"),
        ("X-MLflow-Delivery-Id", "a b\nc"),
    ],
)
def test_malformed_headers_are_refused(header: str, value: str) -> None:
    headers = _headers()
    headers[header] = value
    assert _refusal(headers) is Refusal.MALFORMED


def test_an_oversized_delivery_is_refused_unread() -> None:
    body = b" " * (MAX_BODY_BYTES + 1)
    assert _refusal(_headers(body), body) is Refusal.TOO_LARGE
    assert Refusal.TOO_LARGE.status == 413 and Refusal.REPLAYED.status == 409


def test_the_envelope_is_read_strictly() -> None:
    event = parse_event(BODY)
    assert (event.name, event.model, event.alias, event.version) == (
        "model_version_alias.created", "m", "champion", "7"
    )  # fmt: skip
    assert event.sent_at.startswith("2027-01-15")
    for bad in (b"[1]", b"\xff", b'{"entity": "x"}', BODY.replace(b'"7"', b'"07"')):
        with pytest.raises(DeliveryRefused) as caught:
            parse_event(bad)
        assert caught.value.kind is Refusal.MALFORMED


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match=r"at least 32 characters\. Got 8"):
        check_secret("s" * 8, name="PRIVACY_GATE_WEBHOOK_SECRET")


def test_the_replay_cache_survives_a_restart_and_releases_failed_deliveries(
    tmp_path: Path,
) -> None:
    state = WebhookState(tmp_path)
    assert state.claim_delivery("d-1", now=NOW, keep_s=600)
    assert not state.claim_delivery("d-1", now=NOW + 1, keep_s=600)
    state.close()
    state = WebhookState(tmp_path)  # a restarted receiver
    assert not state.claim_delivery("d-1", now=NOW + 2, keep_s=600)
    assert state.claim_delivery("d-2", now=NOW, keep_s=600)
    state.release_delivery("d-2")  # its processing failed: MLflow's retry is taken
    assert state.claim_delivery("d-2", now=NOW + 3, keep_s=600)
    # Past the window the id is pruned (its timestamp refuses a replay by then).
    assert state.claim_delivery("d-1", now=NOW + 601, keep_s=600)


def test_restore_candidates_are_newest_first_and_kept_across_a_restart(tmp_path: Path) -> None:
    state = WebhookState(tmp_path)
    state.add_verified("m", "champion", 3, at=10.0)
    state.add_verified("m", "champion", 5, at=20.0)
    state.add_verified("m", "champion", 3, at=5.0)  # an older event of 3: the newest is kept
    state.add_verified("m", "production", 9, at=30.0)
    assert state.verified_newest_first("m", "champion") == [5, 3]
    state.add_verified("m", "champion", 3, at=25.0)
    state.forget_verified("m", "champion", 5)
    state.set_placed("m", "champion", None)
    state.set_verdict("m", 3, {"privacy_gate.status": "pass"})
    state.close()
    state = WebhookState(tmp_path)
    assert state.verified_newest_first("m", "champion") == [3]
    assert state.placed("m", "champion") == (True, None)
    assert state.vacated() == [("m", "champion")]
    state.set_placed("m", "champion", 3)
    assert state.placed("m", "champion") == (True, 3) and state.vacated() == []
    state.clear_placed("m", "champion")
    assert state.placed("m", "champion") == (False, None)
    assert state.verdict("m", 3) == {"privacy_gate.status": "pass"}
    assert state.verdict("m", 4) is None


def test_a_deeply_nested_body_is_malformed_not_a_crash() -> None:
    from privacy_gate.mlflow.webhook_signature import parse_event

    depth = 200_000  # far under the 1 MiB limit; deeper than the JSON parser's recursion
    body = b'{"entity": "x", "action": "y", "data": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(DeliveryRefused) as refused:
        parse_event(body)
    assert refused.value.kind is Refusal.MALFORMED and refused.value.kind.status == 400
