"""A full disk under the datasets store: RESOURCE_EXHAUSTED naming the version and what to do, the
version FAILED, no partial blob left, and the service fine once there is room again.

The store is a real 2 MiB tmpfs mounted in the test's temporary directory (tests run as root);
where mounting is not allowed, the tests skip and say so.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tunelab.cli.clients.datasets import DatasetClient
from tunelab.common.grpc.channel import open_channel
from tunelab.datasets.v1 import datasets_pb2 as pb

SIZE = 2 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@dataclass
class Stack:
    client: DatasetClient
    store: object  # tunelab.datasets.store.DatasetStore


@pytest.fixture
def on_small_disk(tmp_path: Path, small_disk: Path) -> Iterator[Stack]:
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings

    settings = DatasetSettings(
        data_dir=tmp_path / "svc",
        store_url=small_disk.as_uri(),
        port=0,
        metrics_port=0,
        allow_private_addresses=True,
        gc_grace_s=0,
    )
    server, store = build_server(settings)
    server.start()
    channel = open_channel(server.address)
    yield Stack(DatasetClient(channel, tmp_path / "cache"), store)
    channel.close()
    server.stop(1)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".tmp-*"))


def test_a_push_that_fills_the_disk_is_resource_exhausted(
    on_small_disk: Stack, small_disk: Path, tmp_path: Path
) -> None:
    c = on_small_disk.client
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    c.create("full", pb.Source(upload=pb.UploadSource()))
    with pytest.raises(grpc.RpcError) as err:
        c.push("full", folder)
    code, details = err.value.code(), err.value.details()
    message = (
        "no space left on the datasets store (a local directory, TUNELAB_STORE_URL) while writing "
        "full@1: free space and retry"
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details == message
    assert str(small_disk) not in details and "incident" not in details
    assert leftovers(small_disk) == []
    version = c.get_version("full@1")
    assert version.state == pb.DatasetVersion.STATE_FAILED and version.error == message

    # With room again (a smaller file) the same dataset takes a new version.
    (folder / "weights.bin").write_bytes(os.urandom(64 * 1024))
    assert c.push("full", folder).state == pb.DatasetVersion.STATE_READY


def test_a_sync_that_fills_the_disk_fails_its_version_with_the_reason(
    on_small_disk: Stack, small_disk: Path, www, tmp_path: Path
) -> None:
    root, base = www
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024))
    with tarfile.open(root / "data.tar.gz", "w:gz") as tar:
        tar.add(payload, arcname="payload.bin")
    c = on_small_disk.client
    c.create("synced", pb.Source(http=pb.HttpSource(url=f"{base}/data.tar.gz")))
    final = list(c.watch("synced@1"))[-1]
    assert final.state == pb.DatasetVersion.STATE_FAILED
    assert final.error == (
        "no space left on the datasets store (a local directory, TUNELAB_STORE_URL) while writing "
        "synced@1: free space and retry"
    )
    assert leftovers(small_disk) == []
