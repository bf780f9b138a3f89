"""Fixtures that start real servers: moto's S3 server, HTTP file servers, the datasets service."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import CHATGLM3_FIXTURE_MISSING, S3Server, ServiceProcess, chatglm3_fixture_dir, free_port
from tunelab.common.grpc.channel import open_channel

# The environments tests' fixtures live beside them, in a plugin module (one conftest.py fewer);
# the Postgres server (``postgres_server``, ``postgres_url``) in pgserver.py.
pytest_plugins = ["environments.envfixtures", "pgserver"]


# Where a job's absolute paths, an agent's scratch area or an attempt's cgroup would land if they
# escaped a test's temporary root: nothing new may appear there during the session.
WATCHED = ("/", "/home", "/var/lib", "/srv", "/opt", "/mnt")
WATCHED_GLOBS = ("/tmp/tunelab-*", "/sys/fs/cgroup/*/tunelab-*", "/sys/fs/cgroup/tunelab-*")


def _outside_entries() -> set[str]:
    import glob

    found = {os.path.join(d, e) for d in WATCHED if os.path.isdir(d) for e in os.listdir(d)}
    return found | {p for pattern in WATCHED_GLOBS for p in glob.glob(pattern)}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_outside_temporary_roots() -> Iterator[None]:
    """Fails the session when the tests left a directory or cgroup outside their temporary roots."""
    before = _outside_entries()
    yield
    deadline = time.monotonic() + 15  # an attempt's cgroup goes once its last process is reaped
    while (left := sorted(_outside_entries() - before)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"tests left these outside their temporary roots: {left}"


@pytest.fixture(scope="session")
def chatglm3_dir() -> Path:
    """THUDM's chatglm3-6b layout with tiny sizes and THUDM's code (read-only: copy before changing)."""
    path = chatglm3_fixture_dir()
    if path is None:
        pytest.skip(CHATGLM3_FIXTURE_MISSING)
    return path


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server on a free port, for the whole session (tests use their own buckets)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield S3Server(f"127.0.0.1:{port}")
    server.stop()


@pytest.fixture
def bucket(moto_server: S3Server, request: pytest.FixtureRequest) -> str:
    name = (
        "t-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40] + f"-{os.getpid() % 10000}"
    )
    client = moto_server.client()
    if not client.bucket_exists(bucket_name=name):
        client.make_bucket(bucket_name=name)
    return name


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[type[ServiceProcess]]:
    started: list[ServiceProcess] = []

    class Tracked(ServiceProcess):
        def start(self) -> ServiceProcess:
            started.append(self)
            return super().start()

    yield Tracked
    for svc in started:
        svc.stop()


@dataclass
class DatasetsStack:
    """The datasets service in this process, a client to it, and the domain object behind it."""

    server: object
    store: object
    client: object
    address: str
    data_dir: Path


@pytest.fixture(params=["local", "s3"])
def datasets(
    request: pytest.FixtureRequest, tmp_path: Path, moto_server: S3Server
) -> Iterator[DatasetsStack]:
    """The datasets service over each object-store backend: a local directory and moto's S3 server."""
    from tunelab.cli.clients.datasets import DatasetClient
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings

    overrides: dict[str, object] = {}
    if request.param == "s3":
        name = f"ds-{os.getpid()}-{free_port()}"
        overrides = {
            "store_url": f"s3://{name}",
            "s3_endpoint": moto_server.endpoint,
            "s3_access_key": moto_server.access_key,
            "s3_secret_key": moto_server.secret_key,
            "s3_secure": False,
        }
    settings = DatasetSettings(
        data_dir=tmp_path / "svc",
        port=0,
        metrics_port=0,
        allow_private_addresses=True,
        gc_grace_s=0,
        **overrides,
    )
    server, store = build_server(settings)
    server.start()
    channel = open_channel(server.address)
    client = DatasetClient(channel, tmp_path / "client-cache")
    yield DatasetsStack(server, store, client, server.address, tmp_path / "svc")
    channel.close()
    server.stop(1)


S3RVER = Path(__file__).resolve().parent.parent / "tools" / "node_modules" / ".bin" / "s3rver"


@pytest.fixture(scope="session")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """s3rver (npm), which checks request signatures (moto's server does not); `make tools` installs it."""
    if not S3RVER.exists():
        pytest.fail(f"{S3RVER} is missing: run `make tools`")
    port = free_port()
    data = tmp_path_factory.mktemp("s3rver")
    proc = subprocess.Popen(
        [
            str(S3RVER),
            "-d",
            str(data),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--silent",
            "--configure-bucket",
            "signed",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # s3rver 3.7 on Node 20 fails listings past 1,000 keys without the legacy OpenSSL provider.
        env={**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield S3Server(f"127.0.0.1:{port}", access_key="S3RVER", secret_key="S3RVER")
    proc.terminate()
    proc.wait(10)
