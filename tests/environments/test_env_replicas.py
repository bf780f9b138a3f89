"""Two environments-service replicas (real processes) on one Postgres and one S3 bucket: each build
runs on exactly one replica, and the builds of a replica killed with SIGKILL mid-build are finished
by the other once their lease lapses. Packages come from a local index; their build backend waits
for a flag, so the kill lands mid-build."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from envhelpers import READY, spec
from support import S3Server, start_together
from tunelab.cli.clients.environments import EnvironmentClient
from tunelab.common.grpc.channel import open_channel

LEASE_S = 4.0
PACKAGES = [f"tl-held-{i}" for i in range(4)]

# A PEP 517 backend that notes each build, waits for the flag, then makes a one-module wheel.
BACKEND = """
import base64, hashlib, os, time, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open(BUILDS, "a") as out:
        out.write(NAME + "\\n")
    deadline = time.time() + 120
    while not os.path.exists(FLAG) and time.time() < deadline:
        time.sleep(0.1)
    dist = NAME.replace("-", "_") + "-0.1"
    files = {
        NAME.replace("-", "_") + "/__init__.py": b"HELD = True\\n",
        dist + ".dist-info/METADATA": ("Metadata-Version: 2.1\\nName: %s\\nVersion: 0.1\\n" % NAME).encode(),
        dist + ".dist-info/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(data)))
    record.append(dist + ".dist-info/RECORD,,")
    files[dist + ".dist-info/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = dist + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel
"""


def _sdist(name: str, builds: Path, flag: Path) -> bytes:
    """An sdist with static metadata (resolving needs no build) whose backend is ``BACKEND``."""
    backend = f"NAME = {name!r}\nBUILDS = {str(builds)!r}\nFLAG = {str(flag)!r}\n" + BACKEND
    pyproject = (
        '[build-system]\nrequires = []\nbuild-backend = "held_backend"\nbackend-path = ["."]\n\n'
        f'[project]\nname = "{name}"\nversion = "0.1"\n'
    )
    files = {
        "PKG-INFO": f"Metadata-Version: 2.2\nName: {name}\nVersion: 0.1\n",
        "pyproject.toml": pyproject,
        "held_backend.py": backend,
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path, body in files.items():
            data = body.encode()
            info = tarfile.TarInfo(f"{name.replace('-', '_')}-0.1/{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def held_index(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A simple index of PACKAGES on 127.0.0.1; yields its URL, the builds log and the flag."""
    root, builds, flag = tmp_path / "index", tmp_path / "builds.log", tmp_path / "go"
    builds.touch()
    for name in PACKAGES:
        sdist = _sdist(name, builds, flag)
        file = f"{name.replace('-', '_')}-0.1.tar.gz"
        folder = root / "simple" / name
        folder.mkdir(parents=True)
        (folder / file).write_bytes(sdist)
        sha = hashlib.sha256(sdist).hexdigest()
        (folder / "index.html").write_text(
            f'<html><body><a href="{file}#sha256={sha}">{file}</a></body></html>'
        )
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/simple", builds, flag
    flag.touch()  # builds of the killed replica, still running, finish and go
    server.shutdown()


@pytest.mark.slow
def test_builds_run_once_and_a_killed_replicas_builds_are_finished(
    postgres_url: str, moto_server: S3Server, bucket: str, service_process, held_index, tmp_path: Path
) -> None:
    index, builds, flag = held_index
    env = {
        "TUNELAB_STATE_URL": postgres_url,
        "TUNELAB_REPLICA_LEASE_S": str(LEASE_S),
        "TUNELAB_DEFAULT_INDEX_URL": index,
        "TUNELAB_PYTHONS": json.dumps([os.path.realpath(sys.executable)]),
        "TUNELAB_HTTP_RETRIES": "0",
        **moto_server.env(bucket),
    }
    replicas = [
        service_process(
            "environments",
            {**env, "TUNELAB_DATA_DIR": str(tmp_path / name), "TUNELAB_REPLICA_ID": name},
            tmp_path / f"{name}.log",
        )
        for name in ("envs-a", "envs-b")
    ]
    start_together(replicas)  # on an empty database
    channels = [open_channel(r.address) for r in replicas]
    clients = [EnvironmentClient(c, tmp_path / f"cache-{i}") for i, c in enumerate(channels)]

    for i, name in enumerate(PACKAGES):  # each replica builds what was created through it
        clients[i % 2].create(name, spec(f"{name}\n"))
    deadline = time.monotonic() + 180
    while len(builds.read_text().splitlines()) < len(PACKAGES):  # every build is under way, held
        assert time.monotonic() < deadline, builds.read_text()
        time.sleep(0.2)
    engine = create_engine(postgres_url)
    with engine.connect() as db:
        owners = dict(db.execute(text("SELECT id, owner FROM environments")).all())  # type: ignore[arg-type]
    assert owners == {n: ("envs-a", "envs-b")[i % 2] for i, n in enumerate(PACKAGES)}

    replicas[0].kill()  # SIGKILL mid-build
    flag.touch()
    for name in PACKAGES:
        built = clients[1].wait(name, timeout=240)
        assert built.state == READY, built.error
    with engine.connect() as db:
        rows = db.execute(text("SELECT id, owner FROM environments")).all()
    engine.dispose()
    assert {tuple(r) for r in rows} == {(n, "") for n in PACKAGES}  # released
    # Built once where they were created, and once more by the survivor for the dead replica's.
    counts = Counter(builds.read_text().splitlines())
    assert counts == Counter({PACKAGES[0]: 2, PACKAGES[1]: 1, PACKAGES[2]: 2, PACKAGES[3]: 1})
    for channel in channels:
        channel.close()
