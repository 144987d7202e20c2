"""A gated MLflow registry for tests and benchmarks: the server, audited versions, a load.

- `start_gated_server`: ``mlflow server`` with ``--registry-store-uri privacygate+<backend>``
  on one backend (SQLite by default, or a ``postgresql://`` database) and the audit
  public key; yields a `Gated` (its client and the signing keys).
- `register`: log a tiny torch model into a new run, optionally with a signed
  ``privacy_gate/report.json`` (passing, failing, another key or run, tampered weights),
  and register it as a version of `MODEL`.
- `run_load`: concurrent raw REST clients (threads, loopback only) sending a planned mix
  of allowed and forbidden registry writes and reads (`plan_load`); each request's
  answer and its start and end time come back as an `Outcome`. Used by
  tests/integration/test_registry_load.py and benchmarks/bench_registry_load.py.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import requests
import torch
from logged_models import log_pt2
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer, start_mlflow_server

from privacy_gate import audit, make_signals, records_from_columns
from privacy_gate.config import parse_config
from privacy_gate.mlflow.audited_model import logged_model_files
from privacy_gate.report import SCHEMA_VERSION
from privacy_gate.signing import load_private_key, sign_report, write_keypair
from privacy_gate.training.weights import weights_sha256

MODEL = "gated-model"
REQUEST_TIMEOUT_S = 60


@dataclass(frozen=True)
class Gated:
    server: MlflowServer
    client: MlflowClient
    private: Any
    other_private: Any


@contextlib.contextmanager
def start_gated_server(
    tmp: Path,
    *,
    backend_store_uri: str | None = None,
    workers: int = 1,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[Gated]:
    """A gated server (tracking and registry on one backend) with `MODEL` registered; the
    keys are made once per folder, so a restarted server verifies the same audits."""
    if not (tmp / "audit.pem").exists():
        write_keypair(tmp / "audit.pem", tmp / "audit.pub.pem")
        write_keypair(tmp / "other.pem", tmp / "other.pub.pem")
    server_dir = tmp / "server"
    backend = backend_store_uri or f"sqlite:///{server_dir / 'mlflow.db'}"
    with start_mlflow_server(
        server_dir,
        backend_store_uri=backend,
        workers=workers,
        extra_args=["--registry-store-uri", f"privacygate+{backend}", *extra_args],
        env={
            "PRIVACY_GATE_PUBLIC_KEY": str(tmp / "audit.pub.pem"),
            "PRIVACY_GATE_PROTECTED_ALIASES": "champion, production",
            **(env or {}),
        },
    ) as server:
        client = MlflowClient(tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri)
        if not client.search_registered_models(f"name = '{MODEL}'"):
            client.create_registered_model(MODEL)
        try:
            yield Gated(
                server,
                client,
                load_private_key(tmp / "audit.pem"),
                load_private_key(tmp / "other.pem"),
            )
        finally:  # register sets the global registry URI (and its environment variable)
            mlflow.set_registry_uri("")
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


@functools.cache
def audited(status: str) -> str:
    """A real audit's JSON (K = 8, 60 records): no leak and a policy it passes, or three
    strongly leaking records and a max_patient_auc it fails."""
    rng = np.random.default_rng(1)
    k, n = 8, 60
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    shift = 0.0 if status == "pass" else 6.0
    scores = rng.standard_normal((k, n)) + masks * np.r_[np.full(3, shift), np.zeros(n - 3)]
    records = records_from_columns([f"r{i}" for i in range(n)], [f"p{i}" for i in range(n)], {})
    limit = 1.0 if status == "pass" else 0.8
    policy = parse_config({"gate": {"max_patient_auc": limit}})
    result = audit(make_signals(scores, masks, task="binary"), records, policy)
    assert result.decision.status.value == status
    return json.dumps(result.report.to_dict())


def report(status: str = "pass", schema: str = SCHEMA_VERSION) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(audited(status))
    data["schema_version"] = schema
    return data


def register(
    gated: Gated,
    *,
    status: str | None = "pass",
    key: Any = None,
    report_run: str | None = None,
    tamper: bool = False,
    schema: str = SCHEMA_VERSION,
    model: torch.nn.Module | None = None,
    bind_files: bool = True,
) -> str:
    """Log a model (a tiny one by default) and optionally a signed report into a new run;
    register it. The report binds the logged model's files (``audit.model_files``) as
    `privacy_gate.mlflow.log_audited_model` does; ``tamper`` registers other weights than
    the audited ones; ``bind_files=False`` signs an old-style audit of the weights only."""
    mlflow.set_tracking_uri(gated.server.tracking_uri)
    mlflow.set_registry_uri(gated.server.tracking_uri)
    mlflow.set_experiment("gated-registry")  # not another module's active experiment
    model = model if model is not None else torch.nn.Linear(3, 1)
    digest = weights_sha256(model)
    with mlflow.start_run() as run:
        info = log_pt2(model)
        files = logged_model_files(gated.client, info.model_uri)
        if tamper:  # the weights registered are not the audited ones
            with torch.no_grad():
                next(model.parameters()).add_(1.0)
            info = log_pt2(model)
        if status is not None:
            signed = sign_report(
                report(status, schema),
                key if key is not None else gated.private,
                run_id=report_run or run.info.run_id,
                model_sha256=digest,
                model_files=files if bind_files else None,
            )
            gated.client.log_text(run.info.run_id, json.dumps(signed), "privacy_gate/report.json")
    version = gated.client.create_model_version(
        MODEL, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    return str(version.version)


def rest_alias(gated: Gated, version: str, alias: str = "champion") -> requests.Response:
    return requests.post(
        f"{gated.server.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": alias, "version": version},
        timeout=REQUEST_TIMEOUT_S,
    )


# ------------------------------------------------------------------ load

# Kinds of request. Allowed: PROMOTE (champion on a passing version: the gate verifies the
# signed audit and re-digests the weights), CANDIDATE (an unprotected alias: no check),
# TAG (an ordinary version tag), READ (the champion alias). Forbidden: REFUSED_PROMOTE
# (champion on a failing or unaudited version), FORGED_TAG (a privacy_gate.* tag).
PROMOTE, CANDIDATE, TAG, READ = "promote", "candidate", "tag", "read"
REFUSED_PROMOTE, FORGED_TAG = "refused_promote", "forged_tag"
FORBIDDEN = frozenset({REFUSED_PROMOTE, FORGED_TAG})
# Share of each kind in the main phase of `plan_load`.
MIX = {PROMOTE: 0.25, REFUSED_PROMOTE: 0.2, TAG: 0.15, FORGED_TAG: 0.1, READ: 0.15, CANDIDATE: 0.15}
# Few ordinary tag keys, so that concurrent clients write the same new tag at once.
TAG_KEYS = ("team", "reviewed", "dataset")


@dataclass(frozen=True)
class Versions:
    """The registered versions a load uses: passing ones for the main phase and, distinct
    from them, for the final burst; failing and unaudited ones (never champion)."""

    passing: tuple[str, ...]
    burst: tuple[str, ...]
    refused: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.passing, *self.burst, *self.refused)


def another_version(gated: Gated, version: str) -> str:
    """A new version of the same run and model files (the gate checks it on its own)."""
    mv = gated.client.get_model_version(MODEL, version)
    model_id = mv.model_id or mv.source.removeprefix("models:/")  # source: models:/<id>
    copy = gated.client.create_model_version(MODEL, mv.source, run_id=mv.run_id, model_id=model_id)
    return str(copy.version)


def register_load_versions(gated: Gated, *, passing: int = 2, burst: int = 2) -> Versions:
    """One audited run registered ``passing + burst`` times (logging a model takes seconds,
    a version does not), a failing and an unaudited one."""
    first = register(gated)
    good = [first, *(another_version(gated, first) for _ in range(passing + burst - 1))]
    return Versions(
        passing=tuple(good[:passing]),
        burst=tuple(good[passing:]),
        refused=(register(gated, status="fail"), register(gated, status=None)),
    )


@dataclass(frozen=True)
class Op:
    kind: str
    version: str
    key: str = ""

    @property
    def allowed(self) -> bool:
        return self.kind not in FORBIDDEN


@dataclass(frozen=True)
class Outcome:
    """One request's answer: HTTP status (0: no answer), error code, body (shortened),
    and its start and end on `time.perf_counter`."""

    op: Op
    status: int
    error_code: str | None
    body: str
    start: float
    end: float

    @property
    def latency_s(self) -> float:
        return self.end - self.start

    @property
    def version_read(self) -> str | None:
        """For a READ answered 200: the version the champion alias pointed to."""
        try:
            return str(json.loads(self.body)["model_version"]["version"])
        except (ValueError, KeyError, TypeError):
            return None


def _main_op(rng: random.Random, versions: Versions) -> Op:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    if kind == PROMOTE:
        return Op(kind, rng.choice(versions.passing))
    if kind in (REFUSED_PROMOTE, FORGED_TAG):
        return Op(kind, rng.choice(versions.refused))
    if kind == TAG:
        return Op(kind, rng.choice(versions.all), rng.choice(TAG_KEYS))
    return Op(kind, rng.choice(versions.all))


def plan_load(
    versions: Versions, *, requests_total: int, concurrency: int, seed: int = 0
) -> tuple[list[Op], list[Op]]:
    """The main phase (shuffled mix, `MIX`) and the final burst (one request per client,
    sent together after every main-phase request has ended): each burst version promoted
    once, the rest forbidden promotions, forged tags and reads. Together
    ``requests_total`` requests."""
    burst = [Op(PROMOTE, v) for v in versions.burst]
    fill = (REFUSED_PROMOTE, FORGED_TAG, READ)
    burst += [
        Op(fill[i % 3], versions.refused[i % len(versions.refused)])
        for i in range(concurrency - len(burst))
    ]
    rng = random.Random(seed)
    main = [_main_op(rng, versions) for _ in range(requests_total - len(burst))]
    return main, burst


def _send(session: requests.Session, base: str, op: Op) -> tuple[int, str | None, str]:
    api = f"{base}/api/2.0/mlflow"
    if op.kind in (PROMOTE, REFUSED_PROMOTE, CANDIDATE):
        alias = "candidate" if op.kind == CANDIDATE else "champion"
        body: Mapping[str, str] = {"name": MODEL, "alias": alias, "version": op.version}
        response = session.post(
            f"{api}/registered-models/alias", json=body, timeout=REQUEST_TIMEOUT_S
        )
    elif op.kind in (TAG, FORGED_TAG):
        key = "privacy_gate.status" if op.kind == FORGED_TAG else f"load.{op.key}"
        body = {"name": MODEL, "version": op.version, "key": key, "value": "pass"}
        response = session.post(
            f"{api}/model-versions/set-tag", json=body, timeout=REQUEST_TIMEOUT_S
        )
    else:
        response = session.get(
            f"{api}/registered-models/alias",
            params={"name": MODEL, "alias": "champion"},
            timeout=REQUEST_TIMEOUT_S,
        )
    try:
        code = response.json().get("error_code")
    except ValueError:
        code = None
    return response.status_code, code, response.text[:2000]


def _phase(base: str, ops: Sequence[Op], concurrency: int, deadline: float) -> list[Outcome]:
    """``concurrency`` threads start together and take the next op until none is left (or
    the deadline has passed: the rest is not sent)."""
    pending = iter(ops)
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    barrier = threading.Barrier(concurrency)

    def client() -> None:
        with requests.Session() as session:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=30)
            while time.monotonic() < deadline:
                with lock:
                    op = next(pending, None)
                if op is None:
                    return
                start = time.perf_counter()
                try:
                    status, code, body = _send(session, base, op)
                except requests.RequestException as exc:
                    status, code, body = 0, None, repr(exc)
                outcome = Outcome(op, status, code, body, start, time.perf_counter())
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_S)
    with lock:
        return list(outcomes)


def run_load(
    base_url: str,
    main: Sequence[Op],
    burst: Sequence[Op],
    *,
    concurrency: int,
    max_seconds: float,
) -> list[Outcome]:
    """Send the main phase with ``concurrency`` clients, then the burst with one client per
    op; stop sending at ``max_seconds``. Loopback servers only."""
    if not base_url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"the load driver only targets loopback servers, not {base_url!r}")
    deadline = time.monotonic() + max_seconds
    outcomes = _phase(base_url, main, concurrency, deadline)
    return outcomes + _phase(base_url, burst, len(burst), deadline)


def possible_last_versions(outcomes: Sequence[Outcome]) -> set[str]:
    """Versions of the allowed champion promotions that could have taken effect last:
    those whose end is not before the latest start of any of them (see
    test_registry_load.py)."""
    promotions = [o for o in outcomes if o.op.kind == PROMOTE]
    if not promotions:
        return set()
    latest_start = max(o.start for o in promotions)
    return {o.op.version for o in promotions if o.end >= latest_start}


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))
