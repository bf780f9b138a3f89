import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(_message.Message):
    __slots__ = ("http", "git", "s3", "upload", "empty", "hf", "dataset")
    HTTP_FIELD_NUMBER: _ClassVar[int]
    GIT_FIELD_NUMBER: _ClassVar[int]
    S3_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    EMPTY_FIELD_NUMBER: _ClassVar[int]
    HF_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    http: HttpSource
    git: GitSource
    s3: S3Source
    upload: UploadSource
    empty: EmptySource
    hf: HuggingFaceSource
    dataset: DatasetSource
    def __init__(self, http: _Optional[_Union[HttpSource, _Mapping]] = ..., git: _Optional[_Union[GitSource, _Mapping]] = ..., s3: _Optional[_Union[S3Source, _Mapping]] = ..., upload: _Optional[_Union[UploadSource, _Mapping]] = ..., empty: _Optional[_Union[EmptySource, _Mapping]] = ..., hf: _Optional[_Union[HuggingFaceSource, _Mapping]] = ..., dataset: _Optional[_Union[DatasetSource, _Mapping]] = ...) -> None: ...

class HttpSource(_message.Message):
    __slots__ = ("url", "headers", "no_extract")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    NO_EXTRACT_FIELD_NUMBER: _ClassVar[int]
    url: str
    headers: _containers.ScalarMap[str, str]
    no_extract: bool
    def __init__(self, url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., no_extract: _Optional[bool] = ...) -> None: ...

class GitSource(_message.Message):
    __slots__ = ("url", "ref", "keep_git_dir")
    URL_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    KEEP_GIT_DIR_FIELD_NUMBER: _ClassVar[int]
    url: str
    ref: str
    keep_git_dir: bool
    def __init__(self, url: _Optional[str] = ..., ref: _Optional[str] = ..., keep_git_dir: _Optional[bool] = ...) -> None: ...

class S3Source(_message.Message):
    __slots__ = ("bucket", "prefix", "endpoint", "region", "secure", "access_key", "secret_key")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_KEY_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    prefix: str
    endpoint: str
    region: str
    secure: bool
    access_key: str
    secret_key: str
    def __init__(self, bucket: _Optional[str] = ..., prefix: _Optional[str] = ..., endpoint: _Optional[str] = ..., region: _Optional[str] = ..., secure: _Optional[bool] = ..., access_key: _Optional[str] = ..., secret_key: _Optional[str] = ...) -> None: ...

class UploadSource(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmptySource(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HuggingFaceSource(_message.Message):
    __slots__ = ("repo_id", "repo_type", "revision", "endpoint", "token", "allow_patterns", "ignore_patterns")
    REPO_ID_FIELD_NUMBER: _ClassVar[int]
    REPO_TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    repo_id: str
    repo_type: str
    revision: str
    endpoint: str
    token: str
    allow_patterns: _containers.RepeatedScalarFieldContainer[str]
    ignore_patterns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, repo_id: _Optional[str] = ..., repo_type: _Optional[str] = ..., revision: _Optional[str] = ..., endpoint: _Optional[str] = ..., token: _Optional[str] = ..., allow_patterns: _Optional[_Iterable[str]] = ..., ignore_patterns: _Optional[_Iterable[str]] = ...) -> None: ...

class DatasetSource(_message.Message):
    __slots__ = ("version", "transform")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    version: str
    transform: str
    def __init__(self, version: _Optional[str] = ..., transform: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "description", "source", "labels", "create_time", "latest_version", "version_count", "display_name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    source: Source
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    latest_version: str
    version_count: int
    display_name: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., source: _Optional[_Union[Source, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_version: _Optional[str] = ..., version_count: _Optional[int] = ..., display_name: _Optional[str] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("name", "state", "progress", "error", "file_count", "size_bytes", "manifest_sha256", "provenance", "create_time", "ready_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[DatasetVersion.State]
        STATE_PENDING: _ClassVar[DatasetVersion.State]
        STATE_FETCHING: _ClassVar[DatasetVersion.State]
        STATE_UPLOADING: _ClassVar[DatasetVersion.State]
        STATE_VERIFYING: _ClassVar[DatasetVersion.State]
        STATE_READY: _ClassVar[DatasetVersion.State]
        STATE_FAILED: _ClassVar[DatasetVersion.State]
    STATE_UNSPECIFIED: DatasetVersion.State
    STATE_PENDING: DatasetVersion.State
    STATE_FETCHING: DatasetVersion.State
    STATE_UPLOADING: DatasetVersion.State
    STATE_VERIFYING: DatasetVersion.State
    STATE_READY: DatasetVersion.State
    STATE_FAILED: DatasetVersion.State
    class ProvenanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    READY_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: DatasetVersion.State
    progress: Progress
    error: str
    file_count: int
    size_bytes: int
    manifest_sha256: str
    provenance: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    ready_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[DatasetVersion.State, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[str] = ..., file_count: _Optional[int] = ..., size_bytes: _Optional[int] = ..., manifest_sha256: _Optional[str] = ..., provenance: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("files_total", "files_done", "files_failed", "bytes_total", "bytes_done", "bytes_uploaded", "bytes_per_second", "eta_seconds", "current_file", "phase")
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_FAILED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FILE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    files_total: int
    files_done: int
    files_failed: int
    bytes_total: int
    bytes_done: int
    bytes_uploaded: int
    bytes_per_second: float
    eta_seconds: float
    current_file: str
    phase: str
    def __init__(self, files_total: _Optional[int] = ..., files_done: _Optional[int] = ..., files_failed: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_uploaded: _Optional[int] = ..., bytes_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., current_file: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class DatasetFile(_message.Message):
    __slots__ = ("path", "size", "sha256", "mode")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    mode: int
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., mode: _Optional[int] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("dataset_id", "dataset")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    dataset: Dataset
    def __init__(self, dataset_id: _Optional[str] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[DatasetVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[DatasetVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDatasetVersionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchDatasetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchDatasetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class ListDatasetFilesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetFilesResponse(_message.Message):
    __slots__ = ("files", "next_page_token", "version")
    FILES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    next_page_token: str
    version: str
    def __init__(self, files: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class StartUploadRequest(_message.Message):
    __slots__ = ("parent", "files", "provenance")
    class ProvenanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PARENT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    files: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    provenance: _containers.ScalarMap[str, str]
    def __init__(self, parent: _Optional[str] = ..., files: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., provenance: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StartUploadResponse(_message.Message):
    __slots__ = ("version", "missing_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    missing_sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., missing_sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class UploadBlobsRequest(_message.Message):
    __slots__ = ("sha256", "size", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadBlobsResponse(_message.Message):
    __slots__ = ("blobs_stored", "bytes_stored")
    BLOBS_STORED_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    blobs_stored: int
    bytes_stored: int
    def __init__(self, blobs_stored: _Optional[int] = ..., bytes_stored: _Optional[int] = ...) -> None: ...

class CommitDatasetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ReadBlobRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ReadBlobResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TransformDatasetRequest(_message.Message):
    __slots__ = ("source_version", "transform", "target")
    SOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source_version: str
    transform: str
    target: str
    def __init__(self, source_version: _Optional[str] = ..., transform: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class GarbageCollectBlobsRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class GarbageCollectBlobsResponse(_message.Message):
    __slots__ = ("blobs_deleted", "bytes_deleted", "blobs_kept")
    BLOBS_DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_DELETED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_KEPT_FIELD_NUMBER: _ClassVar[int]
    blobs_deleted: int
    bytes_deleted: int
    blobs_kept: int
    def __init__(self, blobs_deleted: _Optional[int] = ..., bytes_deleted: _Optional[int] = ..., blobs_kept: _Optional[int] = ...) -> None: ...

class CreateDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class SyncDatasetResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class GetDatasetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class CommitDatasetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class TransformDatasetResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: DatasetVersion
    def __init__(self, version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...
