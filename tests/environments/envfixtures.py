"""Fixtures of the environments tests (loaded by tests/conftest.py as a plugin): the service in this
process (local store or moto's S3 server), a client to it, and a local package index that serves a
package whose build fails and a "private" index that answers 401."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import sys
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tunelab.common.grpc.channel import open_channel

# The interpreter this suite runs on (its real path: a venv's python is a link to it).
PYTHON = os.path.realpath(sys.executable)


@dataclass
class EnvStack:
    server: object
    store: object  # tunelab.environments.store.EnvironmentStore
    client: object  # tunelab.cli.clients.environments.EnvironmentClient
    address: str
    data_dir: Path
    store_dir: Path | None


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uv cache for the whole session, as one service's builds share one."""
    return tmp_path_factory.mktemp("uv-cache")


def _stack(tmp_path: Path, uv_cache: Path, **overrides: object) -> Iterator[EnvStack]:
    from tunelab.cli.clients.environments import EnvironmentClient
    from tunelab.environments.server import build_server
    from tunelab.environments.settings import EnvironmentSettings

    # The local package index below serves on 127.0.0.1: let the SSRF guard through to it alone.
    overrides.setdefault("allowed_networks", ("127.0.0.1/32",))
    settings = EnvironmentSettings(
        data_dir=tmp_path / "svc",
        port=0,
        metrics_port=0,
        uv_cache_dir=uv_cache,
        pythons=[PYTHON],
        http_retries=0,
        http_timeout_s=15,
        **overrides,  # type: ignore[arg-type]
    )
    server, store = build_server(settings)
    server.start()
    channel = open_channel(server.address)
    client = EnvironmentClient(channel, tmp_path / "client-cache")
    local = None if settings.store_url else tmp_path / "svc" / "store"
    yield EnvStack(server, store, client, server.address, tmp_path / "svc", local)
    channel.close()
    server.stop(1)


@pytest.fixture
def envs(tmp_path: Path, uv_cache: Path) -> Iterator[EnvStack]:
    """The environments service over a local directory store."""
    yield from _stack(tmp_path, uv_cache)


@pytest.fixture
def envs_unsafe(tmp_path: Path, uv_cache: Path) -> Iterator[EnvStack]:
    """The service with TUNELAB_ALLOW_UNSAFE_REQUIREMENTS on."""
    yield from _stack(tmp_path, uv_cache, allow_unsafe_requirements=True)


@pytest.fixture
def envs_guarded(tmp_path: Path, uv_cache: Path) -> Iterator[EnvStack]:
    """The service with the SSRF guard as deployed (no network let through) and unsafe lines
    allowed, so index options reach the guard."""
    yield from _stack(tmp_path, uv_cache, allowed_networks=(), allow_unsafe_requirements=True)


@pytest.fixture
def envs_s3(tmp_path: Path, uv_cache: Path, moto_server: Any) -> Iterator[EnvStack]:
    """The environments service over moto's S3 server (the root conftest's ``moto_server``)."""
    yield from _stack(
        tmp_path,
        uv_cache,
        store_url=f"s3://envs-{uuid.uuid4().hex[:12]}",
        s3_endpoint=moto_server.endpoint,
        s3_access_key=moto_server.access_key,
        s3_secret_key=moto_server.secret_key,
        s3_secure=False,
    )


FAILING_BACKEND = """
def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    print("compiling the extension ...")
    raise RuntimeError("tunelab-failing-build: the compiler gave up halfway")
"""
FAILING_PYPROJECT = """[build-system]
requires = []
build-backend = "failing_backend"
backend-path = ["."]

[project]
name = "tunelab-failing-build"
version = "0.1"
"""


def _failing_sdist() -> bytes:
    """An sdist with static metadata (so resolving works) whose build backend raises."""
    files = {
        "PKG-INFO": "Metadata-Version: 2.2\nName: tunelab-failing-build\nVersion: 0.1\n",
        "pyproject.toml": FAILING_PYPROJECT,
        "failing_backend.py": FAILING_BACKEND,
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"tunelab_failing_build-0.1/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class LocalIndex:
    url: str  # a simple index with tunelab-failing-build
    private_url: str  # answers 401 to everything
    auth_seen: list[str]


class _Handler(http.server.SimpleHTTPRequestHandler):
    auth_seen: list[str]

    def do_GET(self) -> None:
        if self.path.startswith("/private/"):
            self.auth_seen.append(self.headers.get("Authorization", ""))
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def local_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    root = tmp_path_factory.mktemp("index")
    sdist = _failing_sdist()
    sha = hashlib.sha256(sdist).hexdigest()
    pkg = root / "simple" / "tunelab-failing-build"
    pkg.mkdir(parents=True)
    (pkg / "tunelab_failing_build-0.1.tar.gz").write_bytes(sdist)
    (pkg / "index.html").write_text(
        f'<html><body><a href="tunelab_failing_build-0.1.tar.gz#sha256={sha}">'
        "tunelab_failing_build-0.1.tar.gz</a></body></html>"
    )
    seen: list[str] = []
    handler = type("Handler", (_Handler,), {"auth_seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield LocalIndex(f"{base}/simple", f"{base}/private/simple", seen)
    server.shutdown()
