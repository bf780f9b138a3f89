"""Symlinks that each look harmless and together lead out of the dataset's folder.

``here -> .`` stays inside, and ``up -> here/..`` reads as ``.`` when its path is normalised as
text, so neither is refused when it is read; only resolving the finished tree shows that ``up`` is
the folder's parent. The archive must be refused as a whole, and nothing may be written outside.
"""

from __future__ import annotations

import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tunelab.common.errors import InvalidArgument
from tunelab.datasets.sources.fetch import fetch_source
from tunelab.datasets.sources.spec import FetchPolicy, HttpSpec

LOCAL = FetchPolicy(allow_private_addresses=True, attempts=1, connect_timeout_s=5, read_timeout_s=30)
OUTSIDE = "resolves outside the folder"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Files:
    root: Path
    base: str

    def serve(self, name: str, data: bytes) -> HttpSpec:
        (self.root / name).write_bytes(data)
        return HttpSpec(f"{self.base}/{name}")


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield Files(root, f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """The folder around the destination: whatever escapes the destination lands here first."""
    (tmp_path / "box" / "dest").mkdir(parents=True)
    return tmp_path / "box"


def link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def zip_bytes(links: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0x20  # a symlink, as Info-ZIP stores one
            zf.writestr(info, target)
    return out.getvalue()


def assert_nothing_outside(box: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in box.iterdir()) == ["dest"]
    assert not any((box / "dest").iterdir())
    assert not list(tmp_path.rglob("pwned.txt"))


CHAIN = [link("here", "."), link("up", "here/..")]


def test_a_link_chain_to_the_parent_is_refused(files: Files, box: Path, tmp_path: Path) -> None:
    spec = files.serve("chain.tar.gz", tar_bytes(CHAIN))
    with pytest.raises(InvalidArgument, match=rf"entry 'up': it is a symlink that {OUTSIDE}"):
        fetch_source(spec, box / "dest", LOCAL)
    assert_nothing_outside(box, tmp_path)


def test_the_same_chain_in_a_zip_is_refused(files: Files, box: Path, tmp_path: Path) -> None:
    spec = files.serve("chain.zip", zip_bytes({"here": ".", "up": "here/.."}))
    with pytest.raises(InvalidArgument, match=rf"entry 'up': it is a symlink that {OUTSIDE}"):
        fetch_source(spec, box / "dest", LOCAL)
    assert_nothing_outside(box, tmp_path)


@pytest.mark.parametrize("file_first", [False, True], ids=["links-then-file", "file-then-links"])
def test_a_file_written_through_the_chain_stays_inside(
    files: Files, box: Path, tmp_path: Path, file_first: bool
) -> None:
    members = [*CHAIN, regular("up/pwned.txt", b"pwned")]
    if file_first:
        members = members[-1:] + members[:-1]
    spec = files.serve("chain.tar.gz", tar_bytes(members))
    with pytest.raises(InvalidArgument, match="entry 'up'"):
        fetch_source(spec, box / "dest", LOCAL)
    assert_nothing_outside(box, tmp_path)


def test_the_service_fails_the_version_and_keeps_nothing(files: Files, tmp_path: Path) -> None:
    """Through the datasets service: the version is FAILED with the entry named, never READY, and
    nothing from the folder around the staging area is read into the dataset."""
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings
    from tunelab.datasets.sources.spec import HttpSpec as Spec

    settings = DatasetSettings(
        data_dir=tmp_path / "svc", port=0, metrics_port=0, allow_private_addresses=True, fetch_attempts=1
    )
    server, store = build_server(settings)
    try:
        spec = files.serve("chain.tar.gz", tar_bytes(CHAIN))
        store.create_dataset("chain", Spec(url=spec.url))
        store.wait_idle(120)
        version = store.get_version("chain@1")
        assert version.state == "FAILED"
        assert "'up'" in version.error and OUTSIDE in version.error
        assert not list((tmp_path / "svc").rglob("up"))  # the staging area is gone with the link
    finally:
        server.stop(0)
        store.close()
