import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnvironmentSpec(_message.Message):
    __slots__ = ("python_version", "requirements", "exclude", "extra_indexes", "default_index", "include_system_site_packages", "allow_unsafe_requirements", "constraints", "torch_backend", "exclude_newer", "platform")
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_INDEXES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INDEX_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SYSTEM_SITE_PACKAGES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_UNSAFE_REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    TORCH_BACKEND_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_NEWER_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    python_version: str
    requirements: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    extra_indexes: _containers.RepeatedCompositeFieldContainer[PackageIndex]
    default_index: PackageIndex
    include_system_site_packages: bool
    allow_unsafe_requirements: bool
    constraints: str
    torch_backend: str
    exclude_newer: _timestamp_pb2.Timestamp
    platform: str
    def __init__(self, python_version: _Optional[str] = ..., requirements: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ..., extra_indexes: _Optional[_Iterable[_Union[PackageIndex, _Mapping]]] = ..., default_index: _Optional[_Union[PackageIndex, _Mapping]] = ..., include_system_site_packages: _Optional[bool] = ..., allow_unsafe_requirements: _Optional[bool] = ..., constraints: _Optional[str] = ..., torch_backend: _Optional[str] = ..., exclude_newer: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., platform: _Optional[str] = ...) -> None: ...

class PackageIndex(_message.Message):
    __slots__ = ("url", "username", "password")
    URL_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    url: str
    username: str
    password: str
    def __init__(self, url: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class Environment(_message.Message):
    __slots__ = ("name", "description", "labels", "spec", "state", "phase", "error", "env_key", "lock", "resolved_python_version", "resolved_platform", "package_count", "size_bytes", "artifact", "cache_hit", "active_lease_count", "create_time", "ready_time", "last_used_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Environment.State]
        STATE_PENDING: _ClassVar[Environment.State]
        STATE_RESOLVING: _ClassVar[Environment.State]
        STATE_INSTALLING: _ClassVar[Environment.State]
        STATE_PACKING: _ClassVar[Environment.State]
        STATE_READY: _ClassVar[Environment.State]
        STATE_FAILED: _ClassVar[Environment.State]
    STATE_UNSPECIFIED: Environment.State
    STATE_PENDING: Environment.State
    STATE_RESOLVING: Environment.State
    STATE_INSTALLING: Environment.State
    STATE_PACKING: Environment.State
    STATE_READY: Environment.State
    STATE_FAILED: Environment.State
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ENV_KEY_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_PLATFORM_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LEASE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    READY_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    labels: _containers.ScalarMap[str, str]
    spec: EnvironmentSpec
    state: Environment.State
    phase: str
    error: str
    env_key: str
    lock: str
    resolved_python_version: str
    resolved_platform: str
    package_count: int
    size_bytes: int
    artifact: EnvironmentArtifact
    cache_hit: bool
    active_lease_count: int
    create_time: _timestamp_pb2.Timestamp
    ready_time: _timestamp_pb2.Timestamp
    last_used_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., spec: _Optional[_Union[EnvironmentSpec, _Mapping]] = ..., state: _Optional[_Union[Environment.State, str]] = ..., phase: _Optional[str] = ..., error: _Optional[str] = ..., env_key: _Optional[str] = ..., lock: _Optional[str] = ..., resolved_python_version: _Optional[str] = ..., resolved_platform: _Optional[str] = ..., package_count: _Optional[int] = ..., size_bytes: _Optional[int] = ..., artifact: _Optional[_Union[EnvironmentArtifact, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., active_lease_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EnvironmentArtifact(_message.Message):
    __slots__ = ("env_key", "size_bytes", "python_path", "archive_format", "archive_sha256", "archive_size_bytes", "archive_object_key", "manifest_sha256", "file_count", "layers")
    class ArchiveFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ARCHIVE_FORMAT_UNSPECIFIED: _ClassVar[EnvironmentArtifact.ArchiveFormat]
        ARCHIVE_FORMAT_TAR_ZSTD: _ClassVar[EnvironmentArtifact.ArchiveFormat]
        ARCHIVE_FORMAT_TAR_ZSTD_LAYERS: _ClassVar[EnvironmentArtifact.ArchiveFormat]
    ARCHIVE_FORMAT_UNSPECIFIED: EnvironmentArtifact.ArchiveFormat
    ARCHIVE_FORMAT_TAR_ZSTD: EnvironmentArtifact.ArchiveFormat
    ARCHIVE_FORMAT_TAR_ZSTD_LAYERS: EnvironmentArtifact.ArchiveFormat
    ENV_KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PYTHON_PATH_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    env_key: str
    size_bytes: int
    python_path: str
    archive_format: EnvironmentArtifact.ArchiveFormat
    archive_sha256: str
    archive_size_bytes: int
    archive_object_key: str
    manifest_sha256: str
    file_count: int
    layers: _containers.RepeatedCompositeFieldContainer[EnvironmentLayer]
    def __init__(self, env_key: _Optional[str] = ..., size_bytes: _Optional[int] = ..., python_path: _Optional[str] = ..., archive_format: _Optional[_Union[EnvironmentArtifact.ArchiveFormat, str]] = ..., archive_sha256: _Optional[str] = ..., archive_size_bytes: _Optional[int] = ..., archive_object_key: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., file_count: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[EnvironmentLayer, _Mapping]]] = ...) -> None: ...

class EnvironmentLayer(_message.Message):
    __slots__ = ("name", "sha256", "size_bytes", "unpacked_size_bytes", "file_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNPACKED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size_bytes: int
    unpacked_size_bytes: int
    file_count: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., unpacked_size_bytes: _Optional[int] = ..., file_count: _Optional[int] = ...) -> None: ...

class EnvironmentFile(_message.Message):
    __slots__ = ("path", "size", "sha256", "mode", "link_target")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    mode: int
    link_target: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., mode: _Optional[int] = ..., link_target: _Optional[str] = ...) -> None: ...

class BuildLogLine(_message.Message):
    __slots__ = ("line_number", "time", "phase", "text")
    LINE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    line_number: int
    time: _timestamp_pb2.Timestamp
    phase: str
    text: str
    def __init__(self, line_number: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., phase: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class EnvironmentLease(_message.Message):
    __slots__ = ("name", "holder", "env_key", "create_time", "expire_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    ENV_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: str
    env_key: str
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[str] = ..., env_key: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateEnvironmentRequest(_message.Message):
    __slots__ = ("environment_id", "environment", "replace")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    environment: Environment
    replace: bool
    def __init__(self, environment_id: _Optional[str] = ..., environment: _Optional[_Union[Environment, _Mapping]] = ..., replace: _Optional[bool] = ...) -> None: ...

class CreateEnvironmentResponse(_message.Message):
    __slots__ = ("environment",)
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    environment: Environment
    def __init__(self, environment: _Optional[_Union[Environment, _Mapping]] = ...) -> None: ...

class GetEnvironmentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetEnvironmentResponse(_message.Message):
    __slots__ = ("environment",)
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    environment: Environment
    def __init__(self, environment: _Optional[_Union[Environment, _Mapping]] = ...) -> None: ...

class ListEnvironmentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEnvironmentsResponse(_message.Message):
    __slots__ = ("environments", "next_page_token")
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedCompositeFieldContainer[Environment]
    next_page_token: str
    def __init__(self, environments: _Optional[_Iterable[_Union[Environment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteEnvironmentRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteEnvironmentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchEnvironmentRequest(_message.Message):
    __slots__ = ("name", "after_line", "exclude_logs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_LINE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_LOGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_line: int
    exclude_logs: bool
    def __init__(self, name: _Optional[str] = ..., after_line: _Optional[int] = ..., exclude_logs: _Optional[bool] = ...) -> None: ...

class WatchEnvironmentResponse(_message.Message):
    __slots__ = ("environment", "log_lines")
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_FIELD_NUMBER: _ClassVar[int]
    environment: Environment
    log_lines: _containers.RepeatedCompositeFieldContainer[BuildLogLine]
    def __init__(self, environment: _Optional[_Union[Environment, _Mapping]] = ..., log_lines: _Optional[_Iterable[_Union[BuildLogLine, _Mapping]]] = ...) -> None: ...

class GetEnvironmentLogsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token", "tail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    tail: int
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., tail: _Optional[int] = ...) -> None: ...

class GetEnvironmentLogsResponse(_message.Message):
    __slots__ = ("lines", "next_page_token")
    LINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[BuildLogLine]
    next_page_token: str
    def __init__(self, lines: _Optional[_Iterable[_Union[BuildLogLine, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetEnvironmentArtifactRequest(_message.Message):
    __slots__ = ("name", "env_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENV_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    env_key: str
    def __init__(self, name: _Optional[str] = ..., env_key: _Optional[str] = ...) -> None: ...

class GetEnvironmentArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: EnvironmentArtifact
    def __init__(self, artifact: _Optional[_Union[EnvironmentArtifact, _Mapping]] = ...) -> None: ...

class ListEnvironmentFilesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "env_key")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENV_KEY_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    env_key: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., env_key: _Optional[str] = ...) -> None: ...

class ListEnvironmentFilesResponse(_message.Message):
    __slots__ = ("files", "next_page_token")
    FILES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[EnvironmentFile]
    next_page_token: str
    def __init__(self, files: _Optional[_Iterable[_Union[EnvironmentFile, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReadEnvironmentArchiveRequest(_message.Message):
    __slots__ = ("name", "offset", "env_key", "layer_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ENV_KEY_FIELD_NUMBER: _ClassVar[int]
    LAYER_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    env_key: str
    layer_sha256: str
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., env_key: _Optional[str] = ..., layer_sha256: _Optional[str] = ...) -> None: ...

class ReadEnvironmentArchiveResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class AcquireEnvironmentLeaseRequest(_message.Message):
    __slots__ = ("parent", "holder", "ttl")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    parent: str
    holder: str
    ttl: _duration_pb2.Duration
    def __init__(self, parent: _Optional[str] = ..., holder: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AcquireEnvironmentLeaseResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: EnvironmentLease
    def __init__(self, lease: _Optional[_Union[EnvironmentLease, _Mapping]] = ...) -> None: ...

class ReleaseEnvironmentLeaseRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ReleaseEnvironmentLeaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnvironmentLeasesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEnvironmentLeasesResponse(_message.Message):
    __slots__ = ("leases", "next_page_token")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[EnvironmentLease]
    next_page_token: str
    def __init__(self, leases: _Optional[_Iterable[_Union[EnvironmentLease, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GarbageCollectEnvironmentsRequest(_message.Message):
    __slots__ = ("max_total_bytes", "min_idle", "dry_run")
    MAX_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIN_IDLE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    max_total_bytes: int
    min_idle: _duration_pb2.Duration
    dry_run: bool
    def __init__(self, max_total_bytes: _Optional[int] = ..., min_idle: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class GarbageCollectEnvironmentsResponse(_message.Message):
    __slots__ = ("deleted_environments", "bytes_freed", "environments_kept", "bytes_kept")
    DELETED_ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_KEPT_FIELD_NUMBER: _ClassVar[int]
    BYTES_KEPT_FIELD_NUMBER: _ClassVar[int]
    deleted_environments: _containers.RepeatedScalarFieldContainer[str]
    bytes_freed: int
    environments_kept: int
    bytes_kept: int
    def __init__(self, deleted_environments: _Optional[_Iterable[str]] = ..., bytes_freed: _Optional[int] = ..., environments_kept: _Optional[int] = ..., bytes_kept: _Optional[int] = ...) -> None: ...
