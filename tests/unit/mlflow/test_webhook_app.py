"""The receiver's HTTP front (`privacy_gate.mlflow.webhook_app`) as uvicorn serves it, over
raw sockets: what it refuses before reading a body."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from privacy_gate.mlflow.registry_settings import GateSettings  # noqa: E402
from privacy_gate.mlflow.webhook_app import (  # noqa: E402
    SERVER_LIMITS,
    Receiver,
    ReceiverConfig,
    create_app,
)
from privacy_gate.mlflow.webhook_signature import MAX_BODY_BYTES  # noqa: E402

SETTINGS = GateSettings(
    protected_aliases=frozenset({"champion"}),
    policy_sha256=None,
    allow_pickle=False,
    public_key_fingerprint="f",
    public_key_problem=None,
)


class _Page(list):  # type: ignore[type-arg]
    token = None


class EmptyRegistry:
    def search_registered_models(self, **_: Any) -> _Page:
        return _Page()

    def search_model_versions(self, **_: Any) -> _Page:
        return _Page()


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    config = ReceiverConfig(
        tracking_uri="mem:", secret="s" * 40, state_dir=tmp_path, settings=SETTINGS
    )
    app = create_app(Receiver(config, client=EmptyRegistry()))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free, log_level="warning", **SERVER_LIMITS)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield free
    server.should_exit = True
    thread.join(timeout=10)


def _answer(port: int, head: bytes, body: bytes) -> bytes:
    """What the receiver answers to ``head`` and the start of a body it never gets all of."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            received = sock.recv(4096)  # a timeout when no answer comes
            if not received:
                break
            answer += received
        return answer


def test_a_chunked_body_is_refused_without_being_read(port: int) -> None:
    """Transfer-Encoding overrides Content-Length: with both, a body of any size would be
    read whole. The first 1 MiB chunk is sent, never the end: the answer comes anyway."""
    head = (
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % MAX_BODY_BYTES + b"x" * MAX_BODY_BYTES + b"\r\n"
    answer = _answer(port, head, chunk)
    assert answer.startswith(b"HTTP/1.1 411"), answer[:200]
    assert b"Transfer-Encoding" in answer


def test_a_declared_oversized_body_is_refused_before_it_is_sent(port: int) -> None:
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
    answer = _answer(port, head, b"")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_the_secret_and_the_notification_url_stay_out_of_reprs_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from privacy_gate.mlflow.webhook_app import notify_revert
    from privacy_gate.mlflow.webhook_reactor import Revert

    hook = "http://127.0.0.1:9/services/T0/B0/SLACKSECRET"  # nothing listens on port 9
    config = ReceiverConfig(
        tracking_uri="mem:", secret="S" * 40, state_dir=tmp_path, settings=SETTINGS,
        notify_url=hook,
    )  # fmt: skip
    assert "S" * 40 not in repr(config) and "SLACKSECRET" not in repr(config)
    revert = Revert("m", "champion", 3, None, ["r"], "<!channel> & <http://x|click>")
    thread = notify_revert(revert, hook)
    assert thread is not None
    thread.join(timeout=30)
    failed = [r.getMessage() for r in caplog.records if "cannot send" in r.getMessage()]
    assert failed and all("SLACKSECRET" not in line for line in failed), failed
    assert "127.0.0.1:9/..." in failed[0]


def test_the_notification_text_is_escaped_for_slack() -> None:
    from privacy_gate.mlflow.webhook_app import notification
    from privacy_gate.mlflow.webhook_reactor import Revert

    text = notification(Revert("m", "a", 3, None, [], "<!channel> & <http://x|y>"))["text"]
    assert text == "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"


def test_the_notification_url_comes_from_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from privacy_gate.cli import main

    monkeypatch.setenv("PRIVACY_GATE_WEBHOOK_SECRET", "s" * 40)
    monkeypatch.setenv("PRIVACY_GATE_WEBHOOK_NOTIFY_URL", "ftp://hooks.example/SECRETPATH")
    argv = ["webhook", "serve", "--state-dir", str(tmp_path), "--tracking-uri", "http://x:9"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "PRIVACY_GATE_WEBHOOK_NOTIFY_URL" in error and "HINT" in error, error
    assert "SECRETPATH" not in error
    with pytest.raises(SystemExit):
        main([*argv, "--notify-url", "https://hooks.example/x"])  # no such option
