"""S3 sources over plain http (moto's server), created through the real datasets service."""

from __future__ import annotations

import io

import pytest

from support import S3Server
from tunelab.datasets.convert import source_from_pb
from tunelab.datasets.v1 import datasets_pb2 as pb


def _put(moto_server: S3Server, bucket: str) -> None:
    data = b"hello over http\n"
    moto_server.client().put_object(bucket, "data/hello.txt", io.BytesIO(data), len(data))


def _s3(moto_server: S3Server, bucket: str, endpoint: str, secure: bool) -> pb.Source:
    return pb.Source(
        s3=pb.S3Source(
            bucket=bucket,
            prefix="data/",
            endpoint=endpoint,
            secure=secure,
            access_key=moto_server.access_key,
            secret_key=moto_server.secret_key,
        )
    )


@pytest.mark.parametrize("scheme", ["http://", ""], ids=["http-endpoint", "insecure-flag"])
def test_s3_source_over_plain_http_becomes_ready(
    datasets, moto_server: S3Server, bucket: str, scheme: str
) -> None:
    """An ``http://`` endpoint, or a bare one with ``secure=false`` (the CLI's --s3-insecure)."""
    _put(moto_server, bucket)
    c = datasets.client
    c.create("d", _s3(moto_server, bucket, scheme + moto_server.endpoint, secure=False))
    states = [v.state for v in c.watch("d@1")]
    assert states[-1] == pb.DatasetVersion.STATE_READY, c.get_version("d@1")
    assert [f.path for f in c.list_files("d@1")] == ["hello.txt"]
    assert c.get("d").source.s3.secure is False


def test_s3_secure_follows_scheme_then_flag_then_aws() -> None:
    def secure(endpoint: str, flag: bool) -> bool:
        return source_from_pb(pb.Source(s3=pb.S3Source(bucket="b", endpoint=endpoint, secure=flag))).secure  # type: ignore[union-attr]

    assert secure("http://h:9000", True) is False
    assert secure("HTTPS://h:9000", False) is True
    assert secure("h:9000", False) is False
    assert secure("h:9000", True) is True
    assert secure("", False) is True  # AWS is only reached over https
