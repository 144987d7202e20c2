"""How long a bad protected alias stays visible under the webhook receiver: alias set ->
reverted, on a local server.

Starts ``mlflow server`` (SQLite, webhooks on: tests/integration/webhook_receiver.py's
settings) and ``privacy-gate webhook serve`` as a process, registers the webhook, logs two
versions (a passing signed audit that binds its files; no audit), then repeats: the
champion is the verified version; ``champion`` is set on the unaudited one; the client
polls the alias (every 10 ms) until it no longer names that version. The latency is from
the moment the set call returned (the alias is committed and readable) to the first read
that sees it reverted; between rounds the registry settles (the receiver's own tag and
alias events are processed: the receiver's /health shows none in flight for 0.5 s); the
first three rounds warm up, untimed. It covers MLflow's asynchronous delivery, the
signature checks, the verification of both versions (the report downloaded, the model's
files hashed) and the writes.

    .venv/bin/python benchmarks/bench_webhook.py
    .venv/bin/python benchmarks/bench_webhook.py --rounds 100
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import requests  # noqa: E402
from gated_registry import MODEL, Gated, percentile, register  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_server import start_mlflow_server  # noqa: E402
from webhook_receiver import SECRET, WEBHOOK_SERVER_ENV, start_receiver  # noqa: E402

from privacy_gate.mlflow.webhook_reactor import EVENTS  # noqa: E402
from privacy_gate.signing import load_private_key, write_keypair  # noqa: E402

POLL_S = 0.01
SETTLE_S = 0.5
ROUND_TIMEOUT_S = 60.0
WARM_UP = 3


def _holder(client: MlflowClient) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)
    except MlflowException:
        return None


def _wait(condition: object, timeout_s: float = ROUND_TIMEOUT_S) -> float:
    """Poll until ``condition()``; the time.perf_counter() of the read that saw it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return time.perf_counter()
        time.sleep(POLL_S)
    raise TimeoutError("the receiver did not act within the round's time limit")


def _settle(url: str) -> None:
    """Until the receiver has had nothing to do for `SETTLE_S` (MLflow sends its own tag
    and alias events of the last round asynchronously, so one idle read is not enough)."""
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < SETTLE_S:
        if requests.get(f"{url}/health", timeout=10).json()["in_flight"]:
            idle_since = time.monotonic()
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--show-log", action="store_true", help="print the receiver log")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_webhook_") as tmp_name:
        tmp = Path(tmp_name)
        write_keypair(tmp / "audit.pem", tmp / "audit.pub.pem")
        with start_mlflow_server(tmp / "server", env=WEBHOOK_SERVER_ENV) as server:
            client = MlflowClient(
                tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri
            )
            client.create_registered_model(MODEL)
            with start_receiver(
                tmp / "receiver", tracking_uri=server.tracking_uri, public_key=tmp / "audit.pub.pem"
            ) as receiver:
                client.create_webhook(
                    "privacy-gate", receiver.webhook_url, events=list(EVENTS), secret=SECRET
                )
                key = load_private_key(tmp / "audit.pem")
                gated = Gated(server, client, key, key)
                good, bad = register(gated), register(gated, status=None)
                latencies, set_calls = [], []
                for _ in range(WARM_UP + args.rounds):  # the first rounds warm up, untimed
                    if _holder(client) != good:
                        client.set_registered_model_alias(MODEL, "champion", good)
                    _wait(lambda: client.get_model_version(MODEL, good).tags.get(
                        "privacy_gate.promoted_alias") == "champion")  # fmt: skip
                    _settle(receiver.url)
                    start = time.perf_counter()
                    client.set_registered_model_alias(MODEL, "champion", bad)
                    committed = time.perf_counter()
                    reverted = _wait(lambda: _holder(client) != bad)
                    set_calls.append(committed - start)
                    latencies.append(reverted - committed)
                warm_up = latencies[:WARM_UP]
                latencies, set_calls = latencies[WARM_UP:], set_calls[WARM_UP:]
                print("warm-up rounds (ms):", " ".join(f"{x * 1000:.0f}" for x in warm_up))
                print("rounds (ms):", " ".join(f"{x * 1000:.0f}" for x in latencies))
                if args.show_log:
                    print(receiver.log_text()[-6000:])
                print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}")
                print(f"rounds: {len(latencies)} (poll every {POLL_S * 1000:.0f} ms)")
                print(
                    "alias set -> reverted: "
                    f"p50 {percentile(latencies, 50) * 1000:.0f} ms, "
                    f"p99 {percentile(latencies, 99) * 1000:.0f} ms, "
                    f"max {max(latencies) * 1000:.0f} ms"
                )
                print(
                    f"the set call itself: p50 {percentile(set_calls, 50) * 1000:.0f} ms, "
                    f"p99 {percentile(set_calls, 99) * 1000:.0f} ms"
                )


if __name__ == "__main__":
    main()
