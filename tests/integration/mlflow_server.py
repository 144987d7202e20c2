"""A real ``mlflow server`` for integration tests: SQLite and artifacts in a temp dir.

Usage in a test module::

    from mlflow_server import MlflowServer, mlflow_server_fixture  # tests/integration

    mlflow_server = mlflow_server_fixture()  # module-scoped; yields an MlflowServer

    def test_x(mlflow_server: MlflowServer) -> None:
        client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)

or directly: ``with start_mlflow_server(tmp_dir, extra_args=[...]) as server: ...``.
``backend_store_uri`` replaces the default SQLite backend (e.g. a ``postgresql://`` URI of
`postgres_server.PostgresServer.create_database`) and ``workers`` sets ``--workers``.
``extra_args`` takes further ``mlflow server`` options, e.g.
``["--registry-store-uri", "privacygate+sqlite:///..."]``; ``env`` adds environment
variables for the server (e.g. a public key). The server's log is in ``server.log_path``
and is shown when it fails to start; `MlflowServer.log_text` gives it to tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MlflowServer:
    """A running server: its tracking URI, files and process."""

    tracking_uri: str
    backend_store_uri: str
    artifacts_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _workers_started(log_path: Path, offset: int) -> int:
    """uvicorn workers that finished start-up, in the log from ``offset`` (bytes) on."""
    with log_path.open("rb") as log:
        log.seek(offset)
        return log.read().count(b"Application startup complete")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group (its workers too), then kill it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def start_mlflow_server(
    directory: Path,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
    backend_store_uri: str | None = None,
    workers: int = 1,
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on a free port of 127.0.0.1, wait for /health, stop after.

    The backend store is ``backend_store_uri``, by default ``sqlite:///<directory>/
    mlflow.db``; artifacts are served by the server (``--artifacts-destination
    <directory>/artifacts``), so clients upload them over HTTP like remote clients do.
    """
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = directory / "artifacts"
    backend = backend_store_uri or f"sqlite:///{directory / 'mlflow.db'}"
    log_path = directory / "server.log"
    # mlflow.cli, not the console script: the venv's python is on hand, its bin maybe not.
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--workers",
        str(workers),
        *extra_args,
    ]
    process: subprocess.Popen[bytes] | None = None
    failure = "was not started"
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)} --port {port}\n".encode())
            log.flush()
            process = subprocess.Popen(
                [*command, "--port", str(port)],
                cwd=directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # its own process group, stopped as a whole
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None and not _healthy(url):
            time.sleep(0.25)
        if process.poll() is None and _healthy(url):
            failure = ""
            # /health answers once one worker serves; wait (within the same limit) for all.
            while (
                workers > 1
                and time.monotonic() < deadline
                and _workers_started(log_path, offset) < workers
            ):
                time.sleep(0.25)
            break
        failure = (
            f"exited with code {process.returncode}"
            if process.poll() is not None
            else f"was not healthy within {timeout_s:.0f} s"
        )
        _stop(process)
        if "address already in use" not in log_path.read_text(errors="replace").lower():
            break
    if failure or process is None:
        log = log_path.read_text(encoding="utf-8", errors="replace")
        raise RuntimeError(f"mlflow server {failure}. Its log ({log_path}):\n{log[-20000:]}")
    server = MlflowServer(url, backend, artifacts, log_path, process)
    try:
        yield server
    finally:
        _stop(process)


def mlflow_server_fixture(
    *,
    scope: Any = "module",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Any:
    """A pytest fixture (default module scope) yielding a running `MlflowServer`.

    Assign it to a module-level name in the test module; the fixture takes the name.
    """

    @pytest.fixture(scope=scope)
    def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
        pytest.importorskip("mlflow")
        with start_mlflow_server(
            tmp_path_factory.mktemp("mlflow_server"), extra_args=extra_args, env=env
        ) as server:
            yield server

    return mlflow_server
