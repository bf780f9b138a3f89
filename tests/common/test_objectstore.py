"""The object-store contract, on the local directory, moto's S3 server and s3rver (signatures)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tunelab.common.errors import NotFound, PermissionDenied, Unavailable
from tunelab.common.settings import StoreSettings
from tunelab.common.storage.objectstore import open_store
from tunelab.common.storage.s3 import S3Store


@pytest.fixture(params=["local", "moto", "s3rver"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return open_store(StoreSettings(store_url=(tmp_path / "store").as_uri()))
    server = request.getfixturevalue("moto_server" if request.param == "moto" else "s3rver")
    bucket = "signed" if request.param == "s3rver" else f"contract-{os.getpid()}"
    settings = StoreSettings(
        store_url=f"s3://{bucket}/some/prefix",
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
        s3_secure=False,
        s3_part_size=5 * 1024 * 1024,
    )
    s = open_store(settings)
    assert isinstance(s, S3Store)
    s.ensure_bucket()
    return s


def test_contract(store, tmp_path: Path) -> None:
    store.put_bytes("a/b/small.txt", b"hello")
    big = os.urandom(12 * 1024 * 1024 + 17)  # above the part size: a multipart upload on S3
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    store.put_file("a/big.bin", src)
    store.put_stream("c/stream.bin", io.BytesIO(b"streamed"), 8)

    assert store.get_bytes("a/b/small.txt") == b"hello"
    info = store.stat("a/big.bin")
    assert info is not None and info.size == len(big)
    assert store.stat("nope") is None
    assert b"".join(store.iter_chunks("a/big.bin", 1 << 20)) == big
    dest = tmp_path / "dl.bin"
    store.download("a/big.bin", dest)
    assert dest.read_bytes() == big
    assert sorted(i.key for i in store.list("a/")) == ["a/b/small.txt", "a/big.bin"]
    assert [i.key for i in store.list("c/")] == ["c/stream.bin"]
    store.put_bytes("a/b/small.txt", b"replaced")
    assert store.get_bytes("a/b/small.txt") == b"replaced"
    store.delete("a/b/small.txt")
    store.delete("a/b/small.txt")  # deleting twice is fine
    assert store.stat("a/b/small.txt") is None
    with pytest.raises(NotFound, match="c/none"):
        store.get_bytes("c/none")


def test_wrong_credentials_are_named(s3rver) -> None:
    settings = StoreSettings(
        store_url="s3://signed",
        s3_endpoint=s3rver.endpoint,
        s3_access_key="NOT-A-KEY",
        s3_secret_key="wrong",
        s3_secure=False,
    )
    with pytest.raises(PermissionDenied, match=r"InvalidAccessKeyId.*TUNELAB_S3_ACCESS_KEY"):
        open_store(settings).put_bytes("x", b"y")


def test_missing_bucket_and_unreachable_server(moto_server) -> None:
    settings = StoreSettings(
        store_url="s3://no-such-bucket",
        s3_endpoint=moto_server.endpoint,
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_secure=False,
    )
    with pytest.raises(NotFound, match=r"bucket 'no-such-bucket' does not exist"):
        open_store(settings).put_bytes("x", b"y")
    dead = settings.model_copy(update={"s3_endpoint": "127.0.0.1:9", "store_url": "s3://bucket"})
    with pytest.raises(Unavailable, match=r"cannot reach the object store .*127\.0\.0\.1:9"):
        open_store(dead).put_bytes("x", b"y")


def test_local_store_refuses_escaping_keys(tmp_path: Path) -> None:
    s = open_store(StoreSettings(store_url=(tmp_path / "s").as_uri()))
    with pytest.raises(Exception, match="escapes the store"):
        s.put_bytes("../outside", b"x")
    assert not (tmp_path / "outside").exists()
