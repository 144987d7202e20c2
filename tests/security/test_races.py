"""Races and crashes against a real gated server (issue 23).

- The rename race: while the gate hashes a large audited model (tens of MB, so the window
  is real), the attacker renames the audited model away and renames a model whose
  version of the same number was never audited into its place (or deletes the version).
  30 tries per configuration: SQLite and PostgreSQL, 1 and 2 workers. Slow: run by
  scripts/test.sh, left out of the fast lane (``-m 'not slow'``).
- ``kill -9`` of the server at the alias commit (just before it, just after it), then a
  restart: the alias and the verdict tags agree.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

import mlflow
import requests
import torch
from gated_registry import MODEL, Gated, register, rest_alias, start_gated_server
from invariants import final_state_allowed
from logged_models import log_pt2
from mlflow.exceptions import MlflowException

TRIES = 30
LARGE_FEATURES = 2900  # a 2900 x 2900 float32 layer: a 34 MB model.pt2
CRASH_HOOK = Path(__file__).parent / "crash_hook"


def _backend(request: pytest.FixtureRequest, kind: str) -> str | None:
    if kind == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_server").create_database())


def _alias(base: str, name: str, version: str) -> requests.Response:
    return requests.post(
        f"{base}/api/2.0/mlflow/registered-models/alias",
        json={"name": name, "alias": "champion", "version": version},
        timeout=120,
    )


def _rename(base: str, name: str, new_name: str) -> None:
    requests.post(
        f"{base}/api/2.0/mlflow/registered-models/rename",
        json={"name": name, "new_name": new_name},
        timeout=120,
    )


def _delete_version(base: str, name: str, version: str) -> None:
    requests.delete(
        f"{base}/api/2.0/mlflow/model-versions/delete",
        json={"name": name, "version": version},
        timeout=120,
    )


def _one_try(gated: Gated, i: int, audited: Any, unaudited: Any, delay: float) -> str:
    """One race; the promotion's answer ("200", "403 moved", "403 ...")."""
    client, base = gated.client, gated.server.tracking_uri
    a, b = f"race-a-{i}", f"race-b-{i}"
    for name, (source, run_id, model_id) in ((a, audited), (b, unaudited)):
        client.create_registered_model(name)
        client.create_model_version(name, source, run_id=run_id, model_id=model_id)
    answer: list[requests.Response] = []
    promote = threading.Thread(target=lambda: answer.append(_alias(base, a, "1")))
    promote.start()
    time.sleep(delay)
    if i % 3 == 2:  # the audited version deleted, a new one registered
        _delete_version(base, a, "1")
    else:  # the audited model renamed away, the unaudited one renamed into its place
        _rename(base, a, f"{a}-away")
        _rename(base, b, a)
    promote.join(120)
    response = answer[0]
    if response.status_code == 200:
        return "200"
    return "403 moved" if "while its audit was verified" in response.text else "403"


def _timed_promotion(gated: Gated, version: str) -> float:
    """Seconds the gate takes to verify and promote ``version`` (the race's window)."""
    started = time.monotonic()
    assert rest_alias(gated, version).status_code == 200
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "workers"), [("sqlite", 1), ("sqlite", 2), ("postgresql", 1), ("postgresql", 2)]
)
def test_no_rename_or_deletion_moves_the_verdict(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, workers: int
) -> None:
    backend = _backend(request, kind)
    with start_gated_server(tmp_path, backend_store_uri=backend, workers=workers) as gated:
        torch.manual_seed(0)
        version = register(gated, model=torch.nn.Linear(LARGE_FEATURES, LARGE_FEATURES))
        mv = gated.client.get_model_version(MODEL, version)
        audited = (mv.source, mv.run_id, mv.source.removeprefix("models:/"))
        with mlflow.start_run():
            small = log_pt2(torch.nn.Linear(3, 1))
        unaudited = (small.model_uri, mv.run_id, small.model_id)  # claims the audit's run
        window = min(_timed_promotion(gated, version) for _ in range(3))  # warm re-checks
        rng = random.Random(0)
        answers = [
            _one_try(gated, i, audited, unaudited, rng.uniform(0.0, 0.9 * window))
            for i in range(TRIES)
        ]
        violations = final_state_allowed(gated.client, {mv.source})
        assert violations == [], (violations, answers)
        # The race was run, not dodged: renames landed inside the verification.
        assert "403 moved" in answers, (window, answers)


# ------------------------------------------------------------------ kill -9


@pytest.fixture
def crash_env() -> Iterator[dict[str, str]]:
    path = os.pathsep.join(p for p in (str(CRASH_HOOK), os.environ.get("PYTHONPATH")) if p)
    yield {"PYTHONPATH": path}


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_at_the_alias_commit_leaves_alias_and_tags_agreeing(
    tmp_path: Path, crash_env: dict[str, str], when: str
) -> None:
    with start_gated_server(tmp_path, env={**crash_env, "PRIVACY_GATE_TEST_CRASH": when}) as gated:
        version = register(gated)
        with pytest.raises(requests.RequestException):
            rest_alias(gated, version)  # the worker dies at the commit
    with start_gated_server(tmp_path) as restarted:
        mv = restarted.client.get_model_version(MODEL, version)
        holds = "champion" in mv.aliases
        passed = mv.tags.get("privacy_gate.status") == "pass"
        assert holds == passed == (when == "after"), (mv.aliases, mv.tags)
        assert final_state_allowed(restarted.client, {mv.source}) == []
        if when == "before":  # nothing was written: asking again works
            assert rest_alias(restarted, version).status_code == 200
        with pytest.raises(MlflowException):
            restarted.client.get_model_version_by_alias(MODEL, "production")
