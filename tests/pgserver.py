"""A real Postgres for the tests (loaded by tests/conftest.py as a plugin): Debian's ``postgresql``
package's initdb and postgres in a temporary directory, listening on a free port of 127.0.0.1 for
the whole session, and a database of its own for each test that asks for ``postgres_url``.

Postgres refuses to run as root; as root the server runs as the ``postgres`` user the package
creates, in a directory outside pytest's own (which only root may enter). Tests that need it skip,
saying why, only where the binaries are absent.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import free_port

BIN_DIRS = "/usr/lib/postgresql/*/bin"
MISSING = (
    "Postgres is not installed: these tests run a real server from Debian's postgresql package "
    f"({BIN_DIRS}/postgres; apt-get install -y postgresql)"
)


def postgres_bin_dir() -> Path | None:
    """The newest installed Postgres's bin directory, or None."""
    found = [Path(p).parent for p in glob.glob(f"{BIN_DIRS}/postgres") if os.access(p, os.X_OK)]
    found = [d for d in found if (d / "initdb").exists()]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, default=None)


@dataclass
class PostgresServer:
    port: int
    user: str = "postgres"

    def url(self, database: str) -> str:
        """The TUNELAB_STATE_URL of ``database``."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database} connect_timeout=10"


def _wait_ready(
    server: PostgresServer, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            psycopg.connect(server.dsn("postgres")).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections in {timeout}s") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """initdb + postgres on a free port of 127.0.0.1 for the session (fsync off: tests only)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(MISSING)
    as_root = os.geteuid() == 0
    run_as = {"user": "postgres", "group": "postgres"} if as_root else {}
    root = Path(tempfile.mkdtemp(prefix="pgtests-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        if as_root:
            shutil.chown(root, "postgres", "postgres")
        data, log = root / "data", root / "postgres.log"
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            **run_as,  # type: ignore[arg-type]
        )
        server = PostgresServer(free_port())
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(server.port),
            "unix_socket_directories": "",
            "max_connections": "400",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        argv: list[str | Path] = [bin_dir / "postgres", "-D", data]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out, **run_as)  # type: ignore[call-overload]
        _wait_ready(server, proc, log)
        yield server
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a fast shutdown: clients still connected are dropped
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for this test; its TUNELAB_STATE_URL."""
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    postgres_server.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url(name)
    postgres_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
