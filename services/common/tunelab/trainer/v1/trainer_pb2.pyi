import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_TYPE_UNSPECIFIED: _ClassVar[JobType]
    JOB_TYPE_PYTORCH: _ClassVar[JobType]
    JOB_TYPE_TENSORFLOW: _ClassVar[JobType]
    JOB_TYPE_PADDLE: _ClassVar[JobType]

class RestartPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_POLICY_UNSPECIFIED: _ClassVar[RestartPolicy]
    RESTART_POLICY_NEVER: _ClassVar[RestartPolicy]
    RESTART_POLICY_ON_FAILURE: _ClassVar[RestartPolicy]
    RESTART_POLICY_ALWAYS: _ClassVar[RestartPolicy]

class Workload(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKLOAD_UNSPECIFIED: _ClassVar[Workload]
    WORKLOAD_BATCH: _ClassVar[Workload]
    WORKLOAD_SERVER: _ClassVar[Workload]
JOB_TYPE_UNSPECIFIED: JobType
JOB_TYPE_PYTORCH: JobType
JOB_TYPE_TENSORFLOW: JobType
JOB_TYPE_PADDLE: JobType
RESTART_POLICY_UNSPECIFIED: RestartPolicy
RESTART_POLICY_NEVER: RestartPolicy
RESTART_POLICY_ON_FAILURE: RestartPolicy
RESTART_POLICY_ALWAYS: RestartPolicy
WORKLOAD_UNSPECIFIED: Workload
WORKLOAD_BATCH: Workload
WORKLOAD_SERVER: Workload

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "gpu_count", "other")
    class OtherEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    OTHER_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    gpu_count: int
    other: _containers.ScalarMap[str, str]
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpu_count: _Optional[int] = ..., other: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DatasetMount(_message.Message):
    __slots__ = ("dataset", "path", "mode", "resolved_version", "committed_version", "commit_time")
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        MODE_UNSPECIFIED: _ClassVar[DatasetMount.Mode]
        MODE_INPUT: _ClassVar[DatasetMount.Mode]
        MODE_OUTPUT: _ClassVar[DatasetMount.Mode]
    MODE_UNSPECIFIED: DatasetMount.Mode
    MODE_INPUT: DatasetMount.Mode
    MODE_OUTPUT: DatasetMount.Mode
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    path: str
    mode: DatasetMount.Mode
    resolved_version: str
    committed_version: str
    commit_time: _timestamp_pb2.Timestamp
    def __init__(self, dataset: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[_Union[DatasetMount.Mode, str]] = ..., resolved_version: _Optional[str] = ..., committed_version: _Optional[str] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("display_name", "type", "image", "priority_class", "priority", "resources", "requests", "workers", "queue", "working_dir", "datasets", "environment", "labels", "annotations", "restart_policy", "backoff_limit", "command", "env_vars", "max_run_duration", "shm_size_bytes", "output_commit_interval", "cancel_grace_period", "workload", "port")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_CLASS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_LIMIT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUN_DURATION_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COMMIT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    display_name: str
    type: JobType
    image: str
    priority_class: str
    priority: int
    resources: Resources
    requests: Resources
    workers: int
    queue: str
    working_dir: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetMount]
    environment: str
    labels: _containers.ScalarMap[str, str]
    annotations: _containers.ScalarMap[str, str]
    restart_policy: RestartPolicy
    backoff_limit: int
    command: _containers.RepeatedScalarFieldContainer[str]
    env_vars: _containers.ScalarMap[str, str]
    max_run_duration: _duration_pb2.Duration
    shm_size_bytes: int
    output_commit_interval: _duration_pb2.Duration
    cancel_grace_period: _duration_pb2.Duration
    workload: Workload
    port: int
    def __init__(self, display_name: _Optional[str] = ..., type: _Optional[_Union[JobType, str]] = ..., image: _Optional[str] = ..., priority_class: _Optional[str] = ..., priority: _Optional[int] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., requests: _Optional[_Union[Resources, _Mapping]] = ..., workers: _Optional[int] = ..., queue: _Optional[str] = ..., working_dir: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetMount, _Mapping]]] = ..., environment: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., annotations: _Optional[_Mapping[str, str]] = ..., restart_policy: _Optional[_Union[RestartPolicy, str]] = ..., backoff_limit: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., max_run_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., shm_size_bytes: _Optional[int] = ..., output_commit_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cancel_grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., workload: _Optional[_Union[Workload, str]] = ..., port: _Optional[int] = ...) -> None: ...

class MetricsPoint(_message.Message):
    __slots__ = ("time", "attempt", "step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "samples_per_second", "gpu_memory_bytes", "progress", "eta", "eval_scores", "extra")
    class EvalScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    EVAL_SCORES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    attempt: int
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    samples_per_second: float
    gpu_memory_bytes: int
    progress: float
    eta: _duration_pb2.Duration
    eval_scores: _containers.ScalarMap[str, float]
    extra: _containers.ScalarMap[str, float]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., samples_per_second: _Optional[float] = ..., gpu_memory_bytes: _Optional[int] = ..., progress: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., eval_scores: _Optional[_Mapping[str, float]] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class JobAttempt(_message.Message):
    __slots__ = ("attempt", "state", "reason", "message", "exit_code", "assigned_gpus", "node", "start_time", "end_time")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_GPUS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    state: Job.State
    reason: str
    message: str
    exit_code: int
    assigned_gpus: _containers.RepeatedScalarFieldContainer[str]
    node: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, attempt: _Optional[int] = ..., state: _Optional[_Union[Job.State, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., exit_code: _Optional[int] = ..., assigned_gpus: _Optional[_Iterable[str]] = ..., node: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "spec", "state", "phase", "reason", "message", "attempt", "exit_code", "assigned_gpus", "executor", "executor_ref", "node", "queue_position", "latest_metrics", "latest_eval_scores", "attempts", "create_time", "start_time", "end_time", "update_time", "endpoint")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Job.State]
        STATE_QUEUED: _ClassVar[Job.State]
        STATE_STARTING: _ClassVar[Job.State]
        STATE_RUNNING: _ClassVar[Job.State]
        STATE_SUCCEEDED: _ClassVar[Job.State]
        STATE_FAILED: _ClassVar[Job.State]
        STATE_CANCELLING: _ClassVar[Job.State]
        STATE_CANCELLED: _ClassVar[Job.State]
    STATE_UNSPECIFIED: Job.State
    STATE_QUEUED: Job.State
    STATE_STARTING: Job.State
    STATE_RUNNING: Job.State
    STATE_SUCCEEDED: Job.State
    STATE_FAILED: Job.State
    STATE_CANCELLING: Job.State
    STATE_CANCELLED: Job.State
    class LatestEvalScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_GPUS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_REF_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    LATEST_EVAL_SCORES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: JobSpec
    state: Job.State
    phase: str
    reason: str
    message: str
    attempt: int
    exit_code: int
    assigned_gpus: _containers.RepeatedScalarFieldContainer[str]
    executor: str
    executor_ref: str
    node: str
    queue_position: int
    latest_metrics: MetricsPoint
    latest_eval_scores: _containers.ScalarMap[str, float]
    attempts: _containers.RepeatedCompositeFieldContainer[JobAttempt]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    endpoint: str
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[Job.State, str]] = ..., phase: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., attempt: _Optional[int] = ..., exit_code: _Optional[int] = ..., assigned_gpus: _Optional[_Iterable[str]] = ..., executor: _Optional[str] = ..., executor_ref: _Optional[str] = ..., node: _Optional[str] = ..., queue_position: _Optional[int] = ..., latest_metrics: _Optional[_Union[MetricsPoint, _Mapping]] = ..., latest_eval_scores: _Optional[_Mapping[str, float]] = ..., attempts: _Optional[_Iterable[_Union[JobAttempt, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., endpoint: _Optional[str] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("line_number", "time", "attempt", "worker_index", "stream", "text")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STREAM_UNSPECIFIED: _ClassVar[LogLine.Stream]
        STREAM_STDOUT: _ClassVar[LogLine.Stream]
        STREAM_STDERR: _ClassVar[LogLine.Stream]
        STREAM_AGENT: _ClassVar[LogLine.Stream]
    STREAM_UNSPECIFIED: LogLine.Stream
    STREAM_STDOUT: LogLine.Stream
    STREAM_STDERR: LogLine.Stream
    STREAM_AGENT: LogLine.Stream
    LINE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    line_number: int
    time: _timestamp_pb2.Timestamp
    attempt: int
    worker_index: int
    stream: LogLine.Stream
    text: str
    def __init__(self, line_number: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., worker_index: _Optional[int] = ..., stream: _Optional[_Union[LogLine.Stream, str]] = ..., text: _Optional[str] = ...) -> None: ...

class Queue(_message.Message):
    __slots__ = ("name", "description", "labels", "state", "gpu_quota", "max_concurrent_jobs", "cpu_quota_millis", "memory_quota_bytes", "usage", "create_time", "update_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Queue.State]
        STATE_OPEN: _ClassVar[Queue.State]
        STATE_PAUSED: _ClassVar[Queue.State]
    STATE_UNSPECIFIED: Queue.State
    STATE_OPEN: Queue.State
    STATE_PAUSED: Queue.State
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
    STATE_FIELD_NUMBER: _ClassVar[int]
    GPU_QUOTA_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    CPU_QUOTA_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    labels: _containers.ScalarMap[str, str]
    state: Queue.State
    gpu_quota: int
    max_concurrent_jobs: int
    cpu_quota_millis: int
    memory_quota_bytes: int
    usage: QueueUsage
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[Queue.State, str]] = ..., gpu_quota: _Optional[int] = ..., max_concurrent_jobs: _Optional[int] = ..., cpu_quota_millis: _Optional[int] = ..., memory_quota_bytes: _Optional[int] = ..., usage: _Optional[_Union[QueueUsage, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QueueUsage(_message.Message):
    __slots__ = ("gpus_in_use", "cpu_millis_in_use", "memory_bytes_in_use", "running_jobs", "queued_jobs")
    GPUS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_IN_USE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    gpus_in_use: int
    cpu_millis_in_use: int
    memory_bytes_in_use: int
    running_jobs: int
    queued_jobs: int
    def __init__(self, gpus_in_use: _Optional[int] = ..., cpu_millis_in_use: _Optional[int] = ..., memory_bytes_in_use: _Optional[int] = ..., running_jobs: _Optional[int] = ..., queued_jobs: _Optional[int] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_bytes", "job")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_bytes: int
    job: str
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., job: _Optional[str] = ...) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("executor", "gpus", "total_gpus", "free_gpus", "cpu_millis", "memory_bytes")
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_GPUS_FIELD_NUMBER: _ClassVar[int]
    FREE_GPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    executor: str
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    total_gpus: int
    free_gpus: int
    cpu_millis: int
    memory_bytes: int
    def __init__(self, executor: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., total_gpus: _Optional[int] = ..., free_gpus: _Optional[int] = ..., cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class JobAssignment(_message.Message):
    __slots__ = ("job", "attempt", "worker_index", "worker_count", "spec", "environment_env_key", "assigned_gpus", "env_vars", "report_interval", "output_commit_interval", "cancel_grace_period")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    WORKER_COUNT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ENV_KEY_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_GPUS_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COMMIT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    job: str
    attempt: int
    worker_index: int
    worker_count: int
    spec: JobSpec
    environment_env_key: str
    assigned_gpus: _containers.RepeatedScalarFieldContainer[str]
    env_vars: _containers.ScalarMap[str, str]
    report_interval: _duration_pb2.Duration
    output_commit_interval: _duration_pb2.Duration
    cancel_grace_period: _duration_pb2.Duration
    def __init__(self, job: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_index: _Optional[int] = ..., worker_count: _Optional[int] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., environment_env_key: _Optional[str] = ..., assigned_gpus: _Optional[_Iterable[str]] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., report_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., output_commit_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cancel_grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("sequence", "time", "phase", "log_line", "metrics", "output_commit", "exit")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    LOG_LINE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    phase: PhaseEvent
    log_line: LogLine
    metrics: MetricsPoint
    output_commit: OutputCommitEvent
    exit: ExitEvent
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., phase: _Optional[_Union[PhaseEvent, _Mapping]] = ..., log_line: _Optional[_Union[LogLine, _Mapping]] = ..., metrics: _Optional[_Union[MetricsPoint, _Mapping]] = ..., output_commit: _Optional[_Union[OutputCommitEvent, _Mapping]] = ..., exit: _Optional[_Union[ExitEvent, _Mapping]] = ...) -> None: ...

class PhaseEvent(_message.Message):
    __slots__ = ("state", "phase", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: Job.State
    phase: str
    message: str
    def __init__(self, state: _Optional[_Union[Job.State, str]] = ..., phase: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class OutputCommitEvent(_message.Message):
    __slots__ = ("path", "version", "final")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: str
    final: bool
    def __init__(self, path: _Optional[str] = ..., version: _Optional[str] = ..., final: _Optional[bool] = ...) -> None: ...

class ExitEvent(_message.Message):
    __slots__ = ("exit_code", "signal", "reason", "message")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: int
    reason: str
    message: str
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("job_id", "job", "validate_only")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job: Job
    validate_only: bool
    def __init__(self, job_id: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "queue", "states", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    queue: str
    states: _containers.RepeatedScalarFieldContainer[Job.State]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., queue: _Optional[str] = ..., states: _Optional[_Iterable[_Union[Job.State, str]]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("name", "grace_period")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    name: str
    grace_period: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class RestartJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RestartJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class StreamJobLogsRequest(_message.Message):
    __slots__ = ("name", "follow", "after_line", "tail", "attempt", "worker_index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    AFTER_LINE_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    follow: bool
    after_line: int
    tail: int
    attempt: int
    worker_index: int
    def __init__(self, name: _Optional[str] = ..., follow: _Optional[bool] = ..., after_line: _Optional[int] = ..., tail: _Optional[int] = ..., attempt: _Optional[int] = ..., worker_index: _Optional[int] = ...) -> None: ...

class StreamJobLogsResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class ListJobMetricsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "attempt", "after_step", "eval_only")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    AFTER_STEP_FIELD_NUMBER: _ClassVar[int]
    EVAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    attempt: int
    after_step: int
    eval_only: bool
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., attempt: _Optional[int] = ..., after_step: _Optional[int] = ..., eval_only: _Optional[bool] = ...) -> None: ...

class ListJobMetricsResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricsPoint]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[MetricsPoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateQueueRequest(_message.Message):
    __slots__ = ("queue_id", "queue")
    QUEUE_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue_id: str
    queue: Queue
    def __init__(self, queue_id: _Optional[str] = ..., queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class CreateQueueResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: Queue
    def __init__(self, queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class GetQueueRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetQueueResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: Queue
    def __init__(self, queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues", "next_page_token")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[Queue]
    next_page_token: str
    def __init__(self, queues: _Optional[_Iterable[_Union[Queue, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateQueueRequest(_message.Message):
    __slots__ = ("queue", "update_mask")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    queue: Queue
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, queue: _Optional[_Union[Queue, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateQueueResponse(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: Queue
    def __init__(self, queue: _Optional[_Union[Queue, _Mapping]] = ...) -> None: ...

class DeleteQueueRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteQueueResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapacityResponse(_message.Message):
    __slots__ = ("capacity",)
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    capacity: Capacity
    def __init__(self, capacity: _Optional[_Union[Capacity, _Mapping]] = ...) -> None: ...

class GetJobAssignmentRequest(_message.Message):
    __slots__ = ("name", "attempt", "worker_index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    attempt: int
    worker_index: int
    def __init__(self, name: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_index: _Optional[int] = ...) -> None: ...

class GetJobAssignmentResponse(_message.Message):
    __slots__ = ("assignment",)
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    assignment: JobAssignment
    def __init__(self, assignment: _Optional[_Union[JobAssignment, _Mapping]] = ...) -> None: ...

class ReportJobEventsRequest(_message.Message):
    __slots__ = ("name", "attempt", "worker_index", "events")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    attempt: int
    worker_index: int
    events: _containers.RepeatedCompositeFieldContainer[JobEvent]
    def __init__(self, name: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_index: _Optional[int] = ..., events: _Optional[_Iterable[_Union[JobEvent, _Mapping]]] = ...) -> None: ...

class ReportJobEventsResponse(_message.Message):
    __slots__ = ("acknowledged_sequence", "cancel_requested", "cancel_grace_period", "attempt_superseded")
    ACKNOWLEDGED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    acknowledged_sequence: int
    cancel_requested: bool
    cancel_grace_period: _duration_pb2.Duration
    attempt_superseded: bool
    def __init__(self, acknowledged_sequence: _Optional[int] = ..., cancel_requested: _Optional[bool] = ..., cancel_grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., attempt_superseded: _Optional[bool] = ...) -> None: ...
