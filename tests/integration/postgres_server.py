"""A real PostgreSQL server for integration tests: a throw-away cluster in a temp dir.

Usage in a test module (the session-scoped fixture is registered in conftest.py)::

    def test_x(postgres_server: PostgresServer) -> None:
        uri = postgres_server.create_database()  # postgresql://postgres@127.0.0.1:<port>/<db>

or directly: ``with start_postgres_server() as server: ...``.

The cluster is made with Debian's binaries (``/usr/lib/postgresql/<version>/bin``:
``initdb``, ``pg_ctl``, ``createdb``), trust authentication for the ``postgres`` user,
UTF8, listening on 127.0.0.1 only (a free port) and on a unix socket in the temp dir.
PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
system user and its commands run through ``runuser``. The server is stopped
(``pg_ctl stop -m fast``) and the temp dir removed at the end, also on failure.

Tests that need it SKIP when the binaries are missing (Debian package ``postgresql``) or
when the driver that SQLAlchemy uses for ``postgresql://`` cannot be imported (the extra
``privacy-gate[postgres]``). Nothing stands in for PostgreSQL: no server, no test.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow_server import free_port

START_TIMEOUT_S = 60
DEBIAN_PACKAGE = "postgresql"
# SQLAlchemy's default DBAPI module for postgresql:// -> the pip package that provides it.
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}
SERVER_SETTINGS = (
    # A test server: durability is not needed, speed is.
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    # 4 server workers x (tracking + registry engines) x SQLAlchemy's pool (5 + 10).
    "max_connections=300",
)


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: where it listens, its files and binaries."""

    port: int
    directory: Path
    bin_dir: Path
    log_path: Path
    user: str = "postgres"
    host: str = "127.0.0.1"

    def uri(self, database: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its ``postgresql://`` URI."""
        name = name or f"db_{os.getpid()}_{next(_COUNTER)}"
        subprocess.run(
            [
                str(self.bin_dir / "createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-E",
                "UTF8",
                name,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return self.uri(name)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


_COUNTER = itertools.count()


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, else the
    directory of an ``initdb`` on PATH."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()
    ]
    if found:
        return max(found, key=lambda p: _version(p.parent.name))
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def driver_module() -> str:
    """The DBAPI module SQLAlchemy loads for a plain ``postgresql://`` URI (psycopg 3 since
    SQLAlchemy 2.1, psycopg2 before)."""
    from sqlalchemy.engine.url import make_url

    return str(make_url("postgresql://").get_dialect().driver)


def missing_requirement() -> str | None:
    """Why PostgreSQL tests cannot run here, naming what to install; None when they can."""
    if find_bin_dir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) not found under "
            f"/usr/lib/postgresql/*/bin: install Debian's '{DEBIAN_PACKAGE}' package "
            f"(apt-get install {DEBIAN_PACKAGE})"
        )
    try:
        module = driver_module()
    except ImportError as exc:  # no SQLAlchemy: no MLflow either
        return f"SQLAlchemy (MLflow) is not installed ({exc}): pip install 'privacy-gate[postgres]'"
    try:
        __import__(module)
    except ImportError as exc:
        package = DRIVER_PACKAGES.get(module, module)
        return (
            f"the PostgreSQL driver SQLAlchemy uses for postgresql:// ({module}) cannot be "
            f"imported ({exc}): pip install '{package}' (or 'privacy-gate[postgres]')"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' system user to run PostgreSQL"
    return None


def _as_owner(command: Sequence[str]) -> list[str]:
    """Run as the ``postgres`` system user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: Sequence[str], log_path: Path, timeout: float) -> None:
    result = subprocess.run(
        _as_owner(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        log = log_path.read_text(errors="replace")[-10000:] if log_path.exists() else ""
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}"
            f"{result.stderr}\nServer log:\n{log}"
        )


def _stop(bin_dir: Path, data: Path, log_path: Path) -> None:
    """``pg_ctl stop -m fast``; the postmaster is killed if that fails."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(Exception):
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            log_path,
            timeout=60,
        )
    if pid_file.exists():
        with contextlib.suppress(Exception):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)


@contextlib.contextmanager
def start_postgres_server(timeout_s: float = START_TIMEOUT_S) -> Iterator[PostgresServer]:
    """initdb + ``pg_ctl -w start`` in a new temp dir; stop and remove it afterwards."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError(missing_requirement())
    # Not under pytest's basetemp: that is root's 0700 directory, closed to 'postgres'.
    directory = Path(tempfile.mkdtemp(prefix="privacy_gate_pg_"))
    data, sockets, log_path = directory / "data", directory / "sockets", directory / "pg.log"
    try:
        sockets.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (directory, sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            log_path,
            timeout=120,
        )
        options = " ".join(f"-c {setting}" for setting in SERVER_SETTINGS)
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            try:
                _run(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        str(log_path),
                        "-w",
                        "-t",
                        str(int(timeout_s)),
                        "-o",
                        f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} {options}",
                        "start",
                    ],
                    log_path,
                    timeout=timeout_s + 10,
                )
                break
            except RuntimeError:
                _stop(bin_dir, data, log_path)
                if "already in use" not in log_path.read_text(errors="replace"):
                    raise
        else:
            raise RuntimeError(f"PostgreSQL found no free port:\n{log_path.read_text()}")
        yield PostgresServer(port, directory, bin_dir, log_path)
    finally:
        _stop(bin_dir, data, log_path)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session (each user takes a fresh database); skips
    with what to install where PostgreSQL or its driver is missing."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    with start_postgres_server() as server:
        yield server
