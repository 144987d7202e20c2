"""The gated registry under concurrent load: one ``mlflow server --workers 4`` on PostgreSQL.

Concurrent raw REST clients (threads, loopback) mix allowed promotions, forbidden ones,
ordinary and forged tag writes, unprotected alias writes and reads (the driver is
gated_registry.run_load, shared with benchmarks/bench_registry_load.py). No mock: a real
PostgreSQL cluster (postgres_server.py; skipped where it or its driver is missing).

The load found two races in the gated store, each with a focused test at the end: two
first writes of one version tag or alias at once (MLflow's ``session.merge``: one INSERT
fails with a unique violation, HTTP 400 after the gate said yes), and two weight digests
at once in one server worker (torch.export's loader was not thread-safe: a passing
version was refused; the server no longer loads models at all, it hashes their files).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

from gated_registry import (
    CANDIDATE,
    FORBIDDEN,
    MODEL,
    PROMOTE,
    READ,
    Gated,
    Outcome,
    Versions,
    plan_load,
    possible_last_versions,
    register_load_versions,
    run_load,
    start_gated_server,
)
from mlflow.entities.model_registry import ModelVersionTag
from postgres_server import PostgresServer

CONCURRENCY = 8
REQUESTS = 200
MAX_SECONDS = 120.0


@dataclass(frozen=True)
class Loaded:
    gated: Gated
    versions: Versions
    outcomes: list[Outcome]
    planned: int
    wall_s: float


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Loaded]:
    with start_gated_server(
        tmp_path_factory.mktemp("registry_load"),
        backend_store_uri=postgres_server.create_database(),
        workers=4,
    ) as gated:
        versions = register_load_versions(gated)
        main, burst = plan_load(versions, requests_total=REQUESTS, concurrency=CONCURRENCY)
        start = time.monotonic()
        outcomes = run_load(
            gated.server.tracking_uri,
            main,
            burst,
            concurrency=CONCURRENCY,
            max_seconds=MAX_SECONDS,
        )
        yield Loaded(gated, versions, outcomes, len(main) + len(burst), time.monotonic() - start)


def _show(outcomes: list[Outcome]) -> str:
    return "\n".join(f"{o.op} -> {o.status} {o.error_code}: {o.body[:500]}" for o in outcomes)


def test_every_request_gets_the_gates_answer(loaded: Loaded) -> None:
    """Forbidden requests are refused (403 PERMISSION_DENIED), allowed ones succeed (200),
    none gets a 5xx or no answer, and every planned request was sent in time."""
    outcomes = loaded.outcomes
    assert len(outcomes) == loaded.planned, f"{len(outcomes)} of {loaded.planned} sent"
    server_errors = [o for o in outcomes if o.status == 0 or o.status >= 500]
    # No answer at all: uvicorn's supervisor may have killed a worker that missed its
    # health ping (5 s): its log says "Child process [...] died".
    deaths = [line for line in loaded.gated.server.log_text().splitlines() if "died" in line]
    assert not server_errors, _show(server_errors) + "\n" + "\n".join(deaths)
    forbidden = [o for o in outcomes if o.op.kind in FORBIDDEN]
    wrong_refusals = [
        o for o in forbidden if (o.status, o.error_code) != (403, "PERMISSION_DENIED")
    ]
    assert forbidden and not wrong_refusals, _show(wrong_refusals)
    allowed = [o for o in outcomes if o.op.allowed and o.op.kind != READ]
    failed = [o for o in allowed if o.status != 200]
    assert allowed and not failed, _show(failed)
    assert {o.op.kind for o in outcomes} >= {PROMOTE, CANDIDATE, READ, *FORBIDDEN}
    log = loaded.gated.server.log_text()
    assert "cannot record the refusal" not in log  # every refusal was recorded
    assert "Traceback" not in log


def test_reads_never_see_a_refused_version_as_champion(loaded: Loaded) -> None:
    """A read of ``champion`` returns a passing version, or "not found" (MLflow answers
    400 INVALID_PARAMETER_VALUE) only while no promotion has ended yet."""
    promotions = [o for o in loaded.outcomes if o.op.kind == PROMOTE]
    first_end = min(o.end for o in promotions)
    passing = {*loaded.versions.passing, *loaded.versions.burst}
    for read in (o for o in loaded.outcomes if o.op.kind == READ):
        if read.status != 200:
            assert read.status == 400 and "alias champion not found" in read.body, _show([read])
            assert read.start < first_end, _show([read])
        else:
            assert read.status == 200 and read.version_read in passing, _show([read])


def test_the_alias_ends_where_the_last_allowed_promotion_put_it(loaded: Loaded) -> None:
    """Which concurrent promotion was "last" is not known from outside, but it is bounded.

    Each allowed ``champion`` promotion w sets the alias at some moment inside its request,
    between its start s_w and end e_w (as seen here). The final value is the version of the
    promotion w* that set it last. Take the promotion l with the latest start: its set
    happened after s_l, so w*'s set did too, hence e_w* >= s_l = max over promotions of s_w.
    So the final version must be that of a promotion whose end is not before the latest
    start (`possible_last_versions`); only ``champion`` promotions count, as no other
    allowed request writes that alias (refused ones must not write it at all).

    The check can fail: the final burst starts after every main-phase request has ended
    (the phases are joined), and it promotes versions (``versions.burst``) that the main
    phase never promotes; so the possible last versions are burst versions only. A lost
    or late-applied main-phase write, a refused promotion that set the alias, or an
    allowed one that did not, would leave the alias elsewhere.
    """
    outcomes, versions = loaded.outcomes, loaded.versions
    possible = possible_last_versions(outcomes)
    assert possible and possible <= set(versions.burst)  # the design, not the gate
    final = loaded.gated.client.get_model_version_by_alias(MODEL, "champion")
    assert final.version in possible, (final.version, possible)
    assert final.tags["privacy_gate.status"] == "pass"
    assert final.tags["privacy_gate.promoted_alias"] == "champion"


def test_refused_versions_keep_the_registrys_verdict(loaded: Loaded) -> None:
    """The forged ``privacy_gate.status=pass`` writes never landed; the refusals did."""
    for version in loaded.versions.refused:
        mv = loaded.gated.client.get_model_version(MODEL, version)
        assert "champion" not in mv.aliases
        assert mv.tags["privacy_gate.status"] == "refused"
        assert mv.tags["privacy_gate.verified_by"] == "registry-store"
        assert "Refused to give" in mv.tags["privacy_gate.refusal"]


def test_the_load_is_bounded(loaded: Loaded) -> None:
    assert loaded.wall_s < MAX_SECONDS


# ------------------------------------------------------------------ the races, focused

ROUNDS = 8


def _at_once(n: int, call: Callable[[int], object]) -> list[BaseException]:
    """``call(0..n-1)`` from n threads released together; the exceptions raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            call(i)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def _store(inner_uri: str, source: Path) -> Any:
    from privacy_gate.mlflow.registry_store import PrivacyGateRegistryStore

    store = PrivacyGateRegistryStore(f"privacygate+{inner_uri}")
    store.create_registered_model("m")
    store.create_model_version("m", source=str(source), run_id=None)
    return store


def test_concurrent_first_writes_of_a_tag_or_alias_all_succeed(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """8 threads write the same new version tag, the store's own ``privacy_gate.*`` tag and
    the same new alias at once, for several new keys: every write succeeds (without
    `privacy_gate.mlflow.server_audit.upsert` some fail with a unique violation)."""
    from privacy_gate.mlflow import _compat

    store = _store(postgres_server.create_database(), tmp_path)
    pinned = _compat.version_identity(store.inner, "m", 1)
    try:
        for r in range(ROUNDS):
            tag, own, alias = f"k{r}", f"privacy_gate.k{r}", f"a{r}"
            errors = _at_once(
                8, lambda i, k=tag: store.set_model_version_tag("m", 1, ModelVersionTag(k, f"{i}"))
            )
            errors += _at_once(
                8,
                lambda i, k=own: store._commit(
                    "m", 1, pinned, set_alias=None, set_tags={k: f"{i}"}
                ),
            )
            errors += _at_once(8, lambda i, a=alias: store.set_registered_model_alias("m", a, 1))
            assert not errors, errors
        tags = store.get_model_version("m", 1).tags
        assert {f"k{r}" for r in range(ROUNDS)} <= set(tags)
        assert set(store.get_registered_model("m").aliases) == {f"a{r}" for r in range(ROUNDS)}
    finally:
        store.inner.engine.dispose()
