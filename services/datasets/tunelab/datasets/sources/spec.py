"""What a dataset's source is, as domain values (the servicer converts to and from protobuf)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from tunelab.common.errors import InvalidArgument


@dataclass(frozen=True)
class HttpSpec:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    no_extract: bool = False
    kind: str = "http"
    secret_fields = ("headers",)


@dataclass(frozen=True)
class GitSpec:
    url: str
    ref: str = ""
    keep_git_dir: bool = False
    kind: str = "git"
    secret_fields = ()


@dataclass(frozen=True)
class S3Spec:
    bucket: str
    prefix: str = ""
    endpoint: str = ""
    region: str = ""
    secure: bool = True
    access_key: str = ""
    secret_key: str = ""
    kind: str = "s3"
    secret_fields = ("secret_key",)


@dataclass(frozen=True)
class HfSpec:
    repo_id: str
    repo_type: str = "model"
    revision: str = ""
    endpoint: str = ""
    token: str = ""
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    kind: str = "hf"
    secret_fields = ("token",)


@dataclass(frozen=True)
class UploadSpec:
    kind: str = "upload"
    secret_fields = ()


@dataclass(frozen=True)
class EmptySpec:
    kind: str = "empty"
    secret_fields = ()


@dataclass(frozen=True)
class DerivedSpec:
    """A version derived from another dataset's version by a built-in transform."""

    version: str
    transform: str
    kind: str = "dataset"
    secret_fields = ()


SourceSpec = HttpSpec | GitSpec | S3Spec | HfSpec | UploadSpec | EmptySpec | DerivedSpec
KINDS: dict[str, type[Any]] = {
    "http": HttpSpec,
    "git": GitSpec,
    "s3": S3Spec,
    "hf": HfSpec,
    "upload": UploadSpec,
    "empty": EmptySpec,
    "dataset": DerivedSpec,
}
# Sources the service fetches itself (the rest get their content from clients or transforms).
FETCHED = ("http", "git", "s3", "hf")


def spec_to_dict(spec: SourceSpec, *, redact: bool = False) -> dict[str, Any]:
    data = asdict(spec)
    if redact:
        for name in spec.secret_fields:
            value = data.get(name)
            if isinstance(value, dict):
                data[name] = {k: "***" for k in value}
            elif value:
                data[name] = "***"
    return data


def spec_from_dict(data: dict[str, Any]) -> SourceSpec:
    kind = data.get("kind", "")
    cls = KINDS.get(kind)
    if cls is None:
        raise InvalidArgument(f"source: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    # A message field left at its default is absent from the dict: name a required one, not a TypeError.
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise InvalidArgument(f"source.{kind}: set {' and '.join(missing)}")
    return cls(**values)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FetchPolicy:
    """Limits every fetch obeys (from the datasets service's settings); it is the SSRF guard's
    :class:`~tunelab.common.netguard.AddressPolicy` too."""

    allow_private_addresses: bool = False
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    attempts: int = 4
    max_download_bytes: int = 500 * 1024**3
    max_archive_bytes: int = 200 * 1024**3
    max_archive_ratio: float = 200.0
    max_archive_files: int = 1_000_000
    # Networks reachable even while private addresses are refused (CIDRs, e.g. an internal mirror).
    allowed_networks: tuple[str, ...] = ()
    # First pause between attempts; it doubles after each failure (capped at 30 s).
    retry_backoff_s: float = 0.5
    # Wall-clock limit of one git command (a clone of a big repository takes a while).
    git_timeout_s: float = 3600.0
    # Named in the guard's hints ("set … on the datasets service").
    service: str = "datasets"
