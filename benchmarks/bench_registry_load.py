"""The gated registry under concurrent load: a gated alias call against an ungated one.

Starts a throw-away PostgreSQL cluster and ``mlflow server --workers 4`` on it with
``--registry-store-uri privacygate+postgresql://...`` (tests/integration/postgres_server.py
and gated_registry.py, the helpers of the load test), registers versions (passing signed
audits, a failing and an unaudited one) and sends the load of
tests/integration/test_registry_load.py (gated_registry.run_load: concurrent raw REST
clients on loopback mixing allowed and forbidden promotions, ordinary and forged tag
writes, ``candidate`` alias writes and reads; then a final burst).

The baseline, measured in the same run and under the same load, is the ungated alias call
(``candidate``: the inner store's write alone); the gated one is ``champion`` on a passing
version, which reads the run's signed audit, verifies it, downloads the version's model
and re-digests its weights before the same write. Latencies are per request as the
client sees them (p50, p99). The server is started with all its workers up, and an untimed
warm-up sends rounds of concurrent gated promotions on new connections so that every
worker has imported torch (the first digest of a worker costs seconds).

    .venv/bin/python benchmarks/bench_registry_load.py
    .venv/bin/python benchmarks/bench_registry_load.py --requests 400 --concurrency 8
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from gated_registry import (  # noqa: E402
    CANDIDATE,
    FORBIDDEN,
    PROMOTE,
    READ,
    Op,
    Outcome,
    percentile,
    plan_load,
    possible_last_versions,
    register_load_versions,
    run_load,
    start_gated_server,
)
from postgres_server import missing_requirement, start_postgres_server  # noqa: E402


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="measured requests")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=4, help="mlflow server --workers")
    parser.add_argument(
        "--warmup", type=int, default=4, help="untimed rounds of concurrent gated promotions"
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on the load")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _unexpected(outcome: Outcome) -> bool:
    """Not the gate's answer: no answer, a 5xx, a refused allowed write, an allowed
    forbidden one, or a read that failed once a champion existed (reads before the first
    promotion answer "not found")."""
    if outcome.op.kind in FORBIDDEN:
        return (outcome.status, outcome.error_code) != (403, "PERMISSION_DENIED")
    if outcome.op.kind == READ:
        return outcome.status != 200 and "alias champion not found" not in outcome.body
    return outcome.status != 200


def _latency_line(label: str, values: list[float]) -> str:
    return (
        f"{label:<34}{len(values):>6}{percentile(values, 50) * 1000:>10.1f}"
        f"{percentile(values, 99) * 1000:>10.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    reason = missing_requirement()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    logging.disable(logging.WARNING)  # MLflow's and torch's registration chatter
    with start_postgres_server() as postgres, tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        with start_gated_server(
            Path(tmp), backend_store_uri=postgres.create_database(), workers=args.workers
        ) as gated:
            start_s = time.monotonic() - started
            versions = register_load_versions(gated)
            base = gated.server.tracking_uri
            warm: list[Outcome] = []
            for _round in range(args.warmup):  # new connections each round: other workers
                warmup = [Op(PROMOTE, versions.passing[i % 2]) for i in range(args.concurrency)]
                warm += run_load(base, warmup, [], concurrency=args.concurrency, max_seconds=600)
            main_ops, burst = plan_load(
                versions,
                requests_total=args.requests,
                concurrency=args.concurrency,
                seed=args.seed,
            )
            began = time.monotonic()
            outcomes = run_load(
                base, main_ops, burst, concurrency=args.concurrency, max_seconds=args.max_seconds
            )
            wall_s = time.monotonic() - began
            final = gated.client.get_model_version_by_alias("gated-model", "champion").version
            log = gated.server.log_text()
    # uvicorn's supervisor kills a worker that does not answer its health ping in time
    # (--timeout-worker-healthcheck, 5 s): its requests are dropped without an answer.
    restarts = [line for line in log.splitlines() if "died" in line or "Traceback" in line]
    gated_s = [o.latency_s for o in outcomes if o.op.kind == PROMOTE]
    ungated_s = [o.latency_s for o in outcomes if o.op.kind == CANDIDATE]
    refusals = sum(o.status == 403 for o in outcomes)
    errors = [o for o in [*warm, *outcomes] if _unexpected(o)]
    print(
        f"gated MLflow server: PostgreSQL {postgres.bin_dir.parent.name}, "
        f"--workers {args.workers}, started in {start_s:.1f} s; "
        f"{len(warm)} warm-up promotions ({sum(_unexpected(o) for o in warm)} unexpected)"
    )
    print(
        f"requests {len(outcomes)} of {args.requests}, concurrency {args.concurrency}, "
        f"wall {wall_s:.1f} s ({len(outcomes) / wall_s:.1f} requests/s)"
    )
    print("by kind:", dict(sorted(Counter(o.op.kind for o in outcomes).items())))
    print(
        f"refusals (403) {refusals}, errors {len(errors)} (5xx: "
        f"{sum(o.status >= 500 or o.status == 0 for o in errors)})"
    )
    for outcome in errors[:5]:
        print(f"  {outcome.op} -> {outcome.status} {outcome.body[:200]}")
    print(f"server log: {len(restarts)} worker deaths or tracebacks", *restarts[:5], sep="\n  ")
    print(f"{'latency (ms)':<34}{'n':>6}{'p50':>10}{'p99':>10}")
    print(_latency_line("gated alias (champion, verified)", gated_s))
    print(_latency_line("ungated alias (candidate)", ungated_s))
    print(
        f"gated / ungated: p50 {percentile(gated_s, 50) / percentile(ungated_s, 50):.1f}x, "
        f"p99 {percentile(gated_s, 99) / percentile(ungated_s, 99):.1f}x"
    )
    possible = possible_last_versions(outcomes)
    print(
        f"champion ends on version {final} (possible last: {sorted(possible)}): "
        f"{'ok' if final in possible else 'WRONG'}"
    )
    return 1 if errors or final not in possible else 0


if __name__ == "__main__":
    sys.exit(main())
