"""Conversions between protobuf messages and the datasets domain values."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from tunelab.common.errors import InvalidArgument
from tunelab.common.protoconv import timestamp
from tunelab.common.storage.manifest import FileEntry
from tunelab.datasets.registry import DatasetRecord, VersionRecord
from tunelab.datasets.sources.spec import SourceSpec, spec_from_dict, spec_to_dict
from tunelab.datasets.v1 import datasets_pb2 as pb

STATE = {
    name: getattr(pb.DatasetVersion.State, f"STATE_{name}")
    for name in ("PENDING", "FETCHING", "UPLOADING", "VERIFYING", "READY", "FAILED")
}


def source_from_pb(msg: pb.Source) -> SourceSpec:
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("dataset.source: set one of http, git, s3, upload, empty, hf")
    data: dict[str, Any] = {"kind": kind}
    data.update(json_format.MessageToDict(getattr(msg, kind), preserving_proto_field_name=True))
    if kind == "s3":
        data["secure"] = _s3_secure(msg.s3)
    return spec_from_dict(data)


def _s3_secure(msg: pb.S3Source) -> bool:
    """Whether an S3 source is reached over https.

    ``secure`` is a plain proto3 bool, so an unset field reads as false, the same as an explicit
    ``--s3-insecure`` (which the CLI sends as ``secure=false`` with the scheme cut off the endpoint).
    Hence: an ``http://`` or ``https://`` endpoint decides by its scheme; a bare ``host[:port]``
    follows ``secure`` as sent (false is plain http); no endpoint means AWS, always https.
    """
    endpoint = msg.endpoint.strip().lower()
    if endpoint.startswith(("http://", "https://")):
        return endpoint.startswith("https://")
    return msg.secure if endpoint else True


def source_to_pb(source: dict[str, Any]) -> pb.Source:
    """The dataset's source with secrets masked (they are write-only)."""
    data = spec_to_dict(spec_from_dict(source), redact=True)
    kind = data.pop("kind")
    msg = pb.Source()
    target = getattr(msg, kind)
    target.SetInParent()
    for key, value in data.items():
        if isinstance(value, dict):
            getattr(target, key).update(value)
        elif isinstance(value, list | tuple):
            getattr(target, key).extend(value)
        else:
            setattr(target, key, value)
    return msg


def dataset_to_pb(rec: DatasetRecord) -> pb.Dataset:
    return pb.Dataset(
        name=f"datasets/{rec.id}",
        description=rec.description,
        source=source_to_pb(rec.source),
        labels=rec.labels,
        create_time=timestamp(rec.create_time),
        latest_version=f"datasets/{rec.id}/versions/{rec.latest_version}" if rec.latest_version else "",
        version_count=rec.version_count,
        display_name=rec.display_name or rec.id,
    )


PROGRESS_FIELDS = set(pb.Progress.DESCRIPTOR.fields_by_name)


def version_to_pb(rec: VersionRecord) -> pb.DatasetVersion:
    return pb.DatasetVersion(
        name=rec.name,
        state=STATE[rec.state],
        progress=pb.Progress(**{k: v for k, v in rec.progress.items() if k in PROGRESS_FIELDS}),
        error=rec.error,
        file_count=rec.file_count,
        size_bytes=rec.size_bytes,
        manifest_sha256=rec.manifest_digest,
        provenance=rec.provenance,
        create_time=timestamp(rec.create_time),
        ready_time=timestamp(rec.ready_time),
    )


def file_to_pb(f: FileEntry) -> pb.DatasetFile:
    return pb.DatasetFile(path=f.path, size=f.size, sha256=f.sha256, mode=f.mode)


def file_from_pb(f: pb.DatasetFile) -> FileEntry:
    return FileEntry(f.path, f.size, f.sha256, 0o755 if f.mode & 0o111 else 0o644)
