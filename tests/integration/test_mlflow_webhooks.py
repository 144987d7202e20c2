"""The webhook receiver against a real ``mlflow server`` (SQLite, webhooks on, no gated
store) and a real receiver process (``privacy-gate webhook serve``), registered with
``privacy-gate webhook register``; real HTTP throughout, state checked on the server.

Every wait polls the server's state until the expected outcome appears (or fails after a
minute, naming what it waited for): the receiver reverts after the fact, and these tests
never assert how fast (benchmarks/bench_webhook.py measures that).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

from gated_registry import MODEL, Gated, register
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_server import free_port, start_mlflow_server
from webhook_receiver import (
    WEBHOOK_SERVER_ENV,
    ReceiverProcess,
    deliver,
    envelope,
    receiver_env,
    start_receiver,
    wait_for,
)

from privacy_gate.signing import load_private_key, write_keypair

CHAMPION = "champion"
ALIAS_CREATED = "model_version_alias.created"


@dataclass
class Setup:
    gated: Gated
    receiver: ReceiverProcess
    directory: Path
    public_key: Path
    notifications: list[dict[str, Any]]
    passing: str  # a version whose signed audit passes and binds its files
    unaudited: str  # a version whose run holds no audit


def _notification_sink(received: list[dict[str, Any]]) -> ThreadingHTTPServer:
    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("webhooks")
    write_keypair(tmp / "audit.pem", tmp / "audit.pub.pem")
    write_keypair(tmp / "other.pem", tmp / "other.pub.pem")
    notifications: list[dict[str, Any]] = []
    sink = _notification_sink(notifications)
    with start_mlflow_server(tmp / "server", env=WEBHOOK_SERVER_ENV) as server:
        client = MlflowClient(tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri)
        client.create_registered_model(MODEL)
        with start_receiver(
            tmp / "receiver",
            tracking_uri=server.tracking_uri,
            public_key=tmp / "audit.pub.pem",
            notify_url=f"http://127.0.0.1:{sink.server_address[1]}/hook",
        ) as receiver:
            registered = subprocess.run(
                [sys.executable, "-m", "privacy_gate", "webhook", "register",
                 "--tracking-uri", server.tracking_uri, "--url", receiver.webhook_url],
                env=receiver_env(tmp / "audit.pub.pem"), capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip
            assert registered.returncode == 0, registered.stderr
            assert "test delivery answered 200" in registered.stdout
            keys = (load_private_key(tmp / "audit.pem"), load_private_key(tmp / "other.pem"))
            gated = Gated(server, client, *keys)
            setup = Setup(
                gated, receiver, tmp / "receiver", tmp / "audit.pub.pem", notifications,
                passing=register(gated), unaudited=register(gated, status=None),
            )  # fmt: skip
            yield setup
            setup.receiver.kill()
    sink.shutdown()


def _tags(setup: Setup, version: str, model: str = MODEL) -> dict[str, str]:
    return dict(setup.gated.client.get_model_version(model, version).tags)


def _holder(setup: Setup, model: str = MODEL) -> str | None:
    try:
        return str(setup.gated.client.get_model_version_by_alias(model, CHAMPION).version)
    except MlflowException:
        return None


def _copy(setup: Setup, version: str, model: str) -> str:
    """A new version of ``model`` from the same run and logged model as ``version``."""
    mv = setup.gated.client.get_model_version(MODEL, version)
    model_id = mv.model_id or mv.source.removeprefix("models:/")
    made = setup.gated.client.create_model_version(model, mv.source, mv.run_id, model_id=model_id)
    return str(made.version)


def _promote_verified(setup: Setup) -> None:
    """The passing version is champion and the receiver has verified it there (its
    synchronous answer to a delivery says so; the server's own delivery may still come)."""
    setup.gated.client.set_registered_model_alias(MODEL, CHAMPION, setup.passing)
    body = envelope(ALIAS_CREATED, {"name": MODEL, "alias": CHAMPION, "version": setup.passing})
    answer = deliver(setup.receiver, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] in ("kept", f"restored {setup.passing}"), answer.text


def test_the_receiver_checks_the_signature_mlflow_sends() -> None:
    """The headers and the HMAC are MLflow's own (its private signer, at this version)."""
    from mlflow.webhooks import constants, delivery

    from privacy_gate.mlflow import webhook_signature as ours

    assert (ours.SIGNATURE_HEADER, ours.TIMESTAMP_HEADER, ours.DELIVERY_ID_HEADER) == (
        constants.WEBHOOK_SIGNATURE_HEADER,
        constants.WEBHOOK_TIMESTAMP_HEADER,
        constants.WEBHOOK_DELIVERY_ID_HEADER,
    )
    body = '{"entity": "model_version", "data": {"name": "é"}}'
    theirs = delivery._generate_hmac_signature("s" * 40, "d-1", "1800000000", body)
    assert ours.sign_delivery("s" * 40, "d-1", "1800000000", body.encode()) == theirs


@pytest.mark.parametrize(
    ("argv", "secret", "public_key", "named"),
    [
        (["serve", "--state-dir", "{tmp}/state"], "s" * 8, "{key}", "at least 32 characters"),
        (["serve", "--state-dir", "{tmp}/state"], None, "{key}", "PRIVACY_GATE_WEBHOOK_SECRET"),
        (["serve", "--state-dir", "{tmp}/state"], "s" * 40, None, "public key"),
        (["serve", "--state-dir", "{tmp}/f/state"], "s" * 40, "{key}", "'--state-dir'"),
        (["serve", "--state-dir", "{tmp}/s", "--max-age", "1"], "s" * 40, "{key}", "--max-age"),
        (["register", "--url", "ftp://x"], "s" * 40, "{key}", "'--url'"),
    ],
)
def test_unusable_settings_stop_before_anything_starts(
    argv: list[str],
    secret: str | None,
    public_key: str | None,
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from privacy_gate.cli import main

    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    (tmp_path / "f").write_text("a file, not a folder")
    for name, value in (
        ("PRIVACY_GATE_WEBHOOK_SECRET", secret),
        ("PRIVACY_GATE_PUBLIC_KEY", public_key),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(key=tmp_path / "k.pub.pem"))
    args = [a.format(tmp=tmp_path) for a in argv]
    assert main(["webhook", *args, "--tracking-uri", "http://127.0.0.1:9"]) == 2
    error = capsys.readouterr().err
    assert named in error and "HINT" in error, error


def test_a_new_version_records_whether_its_audit_verifies(setup: Setup) -> None:
    for version, status in ((setup.passing, "pass"), (setup.unaudited, "refused")):
        wait_for(
            lambda v=version, s=status: _tags(setup, v).get("privacy_gate.status") == s,
            what=f"version {version} tagged {status} on creation",
        )
    assert _tags(setup, setup.passing)["privacy_gate.verified_by"] == "webhook-receiver"
    assert "privacy_gate.promoted_alias" not in _tags(setup, setup.passing)
    refusal = _tags(setup, setup.unaudited)["privacy_gate.refusal"]
    assert "may not hold a protected alias: no privacy audit was found" in refusal


def test_an_unaudited_champion_loses_it_and_the_verified_one_is_restored(setup: Setup) -> None:
    _promote_verified(setup)
    setup.gated.client.set_registered_model_alias(MODEL, CHAMPION, setup.unaudited)
    wait_for(
        lambda: (
            _holder(setup) == setup.passing
            and _tags(setup, setup.unaudited).get("privacy_gate.status") == "refused"
        ),
        what="the champion reverted to the verified version",
    )
    refused = setup.gated.client.get_model_version(MODEL, setup.unaudited)
    assert CHAMPION not in refused.aliases
    assert "no privacy audit was found" in refused.tags["privacy_gate.refusal"]
    assert refused.tags["privacy_gate.verified_by"] == "webhook-receiver"
    assert _tags(setup, setup.passing)["privacy_gate.promoted_alias"] == CHAMPION
    note = wait_for(
        lambda: [n for n in setup.notifications if n["version"] == setup.unaudited],
        what="the outgoing notification",
    )[0]
    assert note["restored_version"] == setup.passing
    assert "no privacy audit was found" in note["text"] and "What to do:" in note["text"]
    assert "privacy-gate webhook receiver reverted" in setup.receiver.log_text()


def test_a_verified_version_keeps_the_alias(setup: Setup) -> None:
    copy = _copy(setup, setup.passing, MODEL)  # the same run and files: verified on its own
    setup.gated.client.set_registered_model_alias(MODEL, CHAMPION, copy)
    wait_for(
        lambda: _tags(setup, copy).get("privacy_gate.promoted_alias") == CHAMPION,
        what="the receiver's pass verdict on the new champion",
    )
    # The receiver has handled the alias event (its verdict is written): the alias stayed.
    assert _holder(setup) == copy
    assert _tags(setup, copy)["privacy_gate.status"] == "pass"


def test_forged_replayed_and_unsigned_deliveries_are_refused(setup: Setup) -> None:
    body = envelope("model_version.created", {"name": MODEL, "version": setup.passing})
    other = envelope("model_version.created", {"name": MODEL, "version": setup.unaudited})
    refusals = {
        "unsigned": deliver(setup.receiver, body, secret=None),
        "forged": deliver(setup.receiver, body, secret="another-secret-" + "x" * 32),
        "altered": deliver(setup.receiver, body, signed_body=other),
        "stale": deliver(setup.receiver, body, timestamp=int(time.time()) - 3600),
        "future": deliver(setup.receiver, body, timestamp=int(time.time()) + 3600),
    }
    for kind, answer in refusals.items():
        assert answer.status_code == 401, (kind, answer.text)
        assert answer.json()["reason"], kind
    # A refused delivery is not recorded: its id is still free for the genuine one.
    assert deliver(setup.receiver, body, secret=None, delivery_id="d-1").status_code == 401
    assert deliver(setup.receiver, body, delivery_id="d-1").status_code == 200
    replay = deliver(setup.receiver, body, delivery_id="d-1")
    assert replay.status_code == 409 and replay.json()["refused"] == "replayed"
    # Signed but unusable input: a 400 with the reason, never a 5xx.
    bad = deliver(setup.receiver, b"not json")
    assert bad.status_code == 400 and "not JSON" in bad.json()["reason"]
    no_version = deliver(setup.receiver, envelope(ALIAS_CREATED, {"name": MODEL, "alias": "x"}))
    assert no_version.status_code == 400 and "data.version" in no_version.json()["reason"]


def _webhook_status(setup: Setup, status: str) -> None:
    hooks = [w for w in setup.gated.client.list_webhooks() if w.name == "privacy-gate"]
    setup.gated.client.update_webhook(hooks[0].webhook_id, status=status)


def _final_state(setup: Setup, model: str, good: str, bad: str) -> tuple[Any, ...]:
    holder = _holder(setup, model)
    named = {good: "good", bad: "bad", None: None}.get(holder, holder)
    good_tags, bad_tags = _tags(setup, good, model), _tags(setup, bad, model)
    return (
        named,
        good_tags.get("privacy_gate.status"),
        good_tags.get("privacy_gate.promoted_alias"),
        bad_tags.get("privacy_gate.status"),
        "no privacy audit was found" in bad_tags.get("privacy_gate.refusal", ""),
    )


def test_duplicate_and_reordered_deliveries_give_the_same_final_state(setup: Setup) -> None:
    """With the server's own deliveries off, the same two events (champion to a verified
    version, then to an unaudited one, both already committed) are delivered in order to
    one model and reversed and duplicated to another: both end the same way."""
    client = setup.gated.client
    _webhook_status(setup, "DISABLED")
    try:
        states = []
        for model, order in (("ordered", (0, 1)), ("shuffled", (1, 1, 0, 0, 1))):
            client.create_registered_model(model)
            good, bad = _copy(setup, setup.passing, model), _copy(setup, setup.unaudited, model)
            client.set_registered_model_alias(model, CHAMPION, good)
            client.set_registered_model_alias(model, CHAMPION, bad)
            start = datetime.now(timezone.utc) - timedelta(seconds=10)
            events = [
                envelope(ALIAS_CREATED, {"name": model, "alias": CHAMPION, "version": v}, when)
                for v, when in ((good, start), (bad, start + timedelta(seconds=1)))
            ]
            for i in order:  # each a new delivery (new id): a redelivery of the same event
                assert deliver(setup.receiver, events[i]).status_code == 200
            states.append(_final_state(setup, model, good, bad))
        assert states[0] == states[1] == ("good", "pass", CHAMPION, "refused", True)
    finally:
        _webhook_status(setup, "ACTIVE")


def test_a_model_tagged_as_a_prompt_loses_an_unverified_champion(setup: Setup) -> None:
    """Tagged mlflow.prompt.is_prompt=true, a model's alias events are prompt_alias.*
    and MlflowClient refuses its alias calls, yet models:/NAME@champion still resolves."""
    client = setup.gated.client
    client.create_registered_model("ehr-prompt")
    bad = _copy(setup, setup.unaudited, "ehr-prompt")
    client.set_registered_model_tag("ehr-prompt", "mlflow.prompt.is_prompt", "true")
    client._get_registry_client().set_registered_model_alias("ehr-prompt", CHAMPION, bad)
    wait_for(
        lambda: (
            _holder(setup, "ehr-prompt") is None
            and _tags(setup, bad, "ehr-prompt").get("privacy_gate.status") == "refused"
        ),
        what="the prompt-tagged model's champion removed",
    )


# Last: it stops the module's receiver.
def test_a_bad_alias_set_while_the_receiver_is_down_is_reverted_on_start_up(
    setup: Setup,
) -> None:
    _promote_verified(setup)
    seen = envelope("model_version.created", {"name": MODEL, "version": setup.passing})
    assert deliver(setup.receiver, seen, delivery_id="before-restart").status_code == 200
    port = int(setup.receiver.url.rsplit(":", 1)[1])
    setup.receiver.kill()
    setup.gated.client.set_registered_model_alias(MODEL, CHAMPION, setup.unaudited)
    time.sleep(1.0)  # MLflow's one delivery attempt meets no receiver (no retries)
    assert _holder(setup) == setup.unaudited  # the window: nothing reverts it meanwhile
    with start_receiver(
        setup.directory, tracking_uri=setup.gated.server.tracking_uri,
        public_key=setup.public_key, port=port,
    ) as restarted:  # fmt: skip
        setup.receiver = restarted
        # start_receiver returns once the start-up reconciliation has run.
        assert _holder(setup) == setup.passing
        assert _tags(setup, setup.unaudited)["privacy_gate.status"] == "refused"
        assert f"{MODEL}@{CHAMPION}: reverted to {setup.passing}" in restarted.log_text()
        # The replay cache survived the restart.
        assert deliver(restarted, seen, delivery_id="before-restart").status_code == 409
