"""Random but well-typed request messages for every RPC of the four services, sent to them running
as real processes: no answer may be a server error (INTERNAL or UNKNOWN), every service must still
be healthy afterwards, and no service may have logged an error it did not expect.

The messages are drawn from the protobuf descriptors themselves (hypothesis strategies), so a new
RPC or field is fuzzed without touching this file. String fields that name resources are drawn
partly from resources that exist, so requests get past "not found" into the code behind it.

Nothing leaves the machine: every URL-like field points at a closed port on 127.0.0.1, the
services' default index, hub and proxies do too, jobs run `false` as their agent and engines
`false` as their Python. Derandomized, so a failure reproduces; about a minute on 2 cores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import ServiceProcess, service_stack
from tunelab.common.grpc.channel import open_channel
from tunelab.datasets.v1 import datasets_pb2
from tunelab.environments.v1 import environments_pb2
from tunelab.gateway.v1 import gateway_pb2
from tunelab.trainer.v1 import trainer_pb2

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token"
EXAMPLES = 40  # per RPC: the whole module takes about 50 s on 2 cores
SERVER_ERRORS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
PROTOS: dict[str, ModuleType] = {
    "datasets": datasets_pb2,
    "environments": environments_pb2,
    "trainer": trainer_pb2,
    "gateway": gateway_pb2,
}
# A port bound and never listened on, held for the whole run: whatever is sent to it is refused at
# once, and no server started meanwhile can take it.
_HELD = socket.socket()
_HELD.bind(("127.0.0.1", 0))
CLOSED = _HELD.getsockname()[1]
NOWHERE = f"http://127.0.0.1:{CLOSED}"

# -- strategies from descriptors ----------------------------------------------------------------

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
URL_FIELDS = re.compile(r"url|endpoint|uri|host|addr")
ID_FIELDS = re.compile(r"_id$")
NAME_FIELDS = re.compile(r"^(name|parent|target|holder|dataset|environment|queue|source_version|version)$")
EDGES = ["", " ", ".", "..", "/", "a/b", "../../etc/passwd", "\x00", "A" * 300, "日本語", "-1", "0", "null"]
# Words the services know (values of their string "enums", specs, commands): random text rarely
# gets past the first check, these reach the code behind it.
WORDS = [
    "advertisegen-to-conversations",
    "3.11",
    "3.12",
    "six",
    "six==1.17.0",
    "model",
    "dataset",
    "space",
    "main",
    "HEAD",
    "python",
    "-c",
    "print(1)",
    "true",
    "cpu=1",
    "memory=1Gi",
    "nvidia.com/gpu",
    "bf16",
    "float16",
    "auto",
    "cuda",
    "cpu",
    "PYTORCH",
    "default",
    "high",
    "low",
    "a.txt",
    "data/",
    "/work",
    "/tmp/tunelab-fuzz-never",
    "data.tar.gz",
    "ro",
    "x=y",
]
TEXT = st.one_of(st.text(max_size=24), st.sampled_from(EDGES), st.sampled_from(WORDS))
# Reachable-looking and malformed URLs, drawn as often as each other (sampled_from favours the first).
URLS = st.sampled_from(
    [
        NOWHERE,
        f"{NOWHERE}/data.tar.gz",
        f"{NOWHERE}/simple",
        f"127.0.0.1:{CLOSED}",
        f"http://localhost:{CLOSED}/x",
        f"https://127.0.0.1:{CLOSED}/x.zip",
        f"http://user:pass@127.0.0.1:{CLOSED}/x",
    ]
) | st.sampled_from(
    [
        "http://[::1",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:port/",
        f"ftp://127.0.0.1:{CLOSED}/x",
        "file:///nonexistent/tunelab-fuzz",
        "http://",
        "not a url",
        "",
    ]
)
IDS = st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)
PRESENT = st.integers(0, 3).map(bool)  # a field is set three times out of four
PRESENT_MESSAGE = st.integers(0, 9).map(bool)  # a message field nine times out of ten


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    """The edges of the range, small numbers, and anything in it."""
    edges = sorted({lo, hi, 0, 1} | ({-1} if lo < 0 else set()))
    return st.sampled_from(edges) | st.integers(max(lo, -1000), min(hi, 1000)) | st.integers(lo, hi)


def scalar(field: FieldDescriptor, names: list[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        if URL_FIELDS.search(field.name):
            return URLS
        if ID_FIELDS.search(field.name):
            return st.one_of(IDS, IDS, st.sampled_from(names), TEXT)
        if NAME_FIELDS.search(field.name):
            return st.one_of(st.sampled_from(names[:8]), st.sampled_from(names), IDS, TEXT)
        return TEXT
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [99])  # open enums
    if t in INT_RANGES:
        return ints(*INT_RANGES[t])
    raise AssertionError(f"no strategy for {field.full_name} (type {t})")


def well_known(desc: Descriptor) -> st.SearchStrategy[dict[str, Any]] | None:
    """Values the runtime accepts for google.protobuf types (others make the client fail, not us)."""
    if desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        lo, hi = (-62135596800, 253402300799) if desc.name == "Timestamp" else (-315576000000, 315576000000)
        return st.fixed_dictionaries(
            {"seconds": ints(lo, hi), "nanos": st.integers(0, 999_999_999) | st.just(0)}
        )
    if desc.full_name == "google.protobuf.FieldMask":
        return st.fixed_dictionaries(
            {"paths": st.lists(st.from_regex(r"[a-z_.]{1,20}", fullmatch=True), max_size=3)}
        )
    return None


@st.composite
def message(draw: st.DrawFn, desc: Descriptor, names: list[str], depth: int = 0) -> dict[str, Any]:
    """A message as a dict of field values (each field present or not; one field of each oneof)."""
    known = well_known(desc)
    if known is not None:
        return draw(known)
    values: dict[str, Any] = {}
    if depth > 4:
        return values
    # Descriptors are compared by name: the runtime hands out a new wrapper object on each access.
    # A oneof is left unset one time in (3 x its fields + 1).
    chosen = {o.name: draw(st.sampled_from([None, *[f.name for f in o.fields] * 3])) for o in desc.oneofs}
    for field in desc.fields:
        group = field.containing_oneof
        if group is not None and chosen[group.name] != field.name:
            continue
        if group is None and not draw(PRESENT_MESSAGE if field.message_type is not None else PRESENT):
            continue
        values[field.name] = draw(value(field, names, depth))
    return values


def value(field: FieldDescriptor, names: list[str], depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, val = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(scalar(key, names), one(val, names, depth + 1), max_size=3)
    single = one(field, names, depth)
    if not field.is_repeated:
        return single
    return st.lists(single, min_size=1 if URL_FIELDS.search(field.name) else 0, max_size=3)


def one(field: FieldDescriptor, names: list[str], depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message(field.message_type, names, depth + 1)
    return scalar(field, names)


def build(cls: type[Message], values: dict[str, Any]) -> Message:
    """The message from ``message``'s dict, made safe: nothing it names may be off this machine."""
    msg = cls()
    _fill(msg, values)
    _keep_local(msg)
    return msg


def _fill(msg: Message, values: dict[str, Any]) -> None:
    for name, val in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            for k, v in val.items():
                if field.message_type.fields_by_name["value"].message_type is not None:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated:
            container = getattr(msg, name)
            for item in val:
                if field.message_type is not None:
                    _fill(container.add(), item)
                else:
                    container.append(item)
        elif field.message_type is not None:
            sub = getattr(msg, name)
            sub.SetInParent()
            _fill(sub, val)
        else:
            setattr(msg, name, val)


TORCH_BACKEND = re.compile(r"^(auto|cpu|cu\d+|rocm[\d.]*|xpu)$")


def _keep_local(msg: Message) -> None:
    """An S3 source without an endpoint means AWS, and a real torch backend means PyTorch's index:
    both are pointed back at this machine."""
    for field, val in msg.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        for sub in val if field.is_repeated else [val]:
            _keep_local(sub)
    if msg.DESCRIPTOR.name == "S3Source" and not msg.endpoint:  # type: ignore[attr-defined]
        msg.endpoint = f"127.0.0.1:{CLOSED}"  # type: ignore[attr-defined]
    if msg.DESCRIPTOR.name == "EnvironmentSpec" and TORCH_BACKEND.match(msg.torch_backend):  # type: ignore[attr-defined]
        msg.torch_backend = ""  # type: ignore[attr-defined]


# -- valid requests, mutated ------------------------------------------------------------------
# A random message is nearly always refused by its first check; these valid requests with a few
# fields replaced by random ones reach the code behind the checks.

HEX = "ab" * 32
TEMPLATES: dict[str, list[dict[str, Any]]] = {
    "CreateDataset": [
        {"dataset_id": "fz", "dataset": {"source": {"empty": {}}, "description": "d"}},
        {"dataset_id": "fz", "dataset": {"source": {"http": {"url": f"{NOWHERE}/a.tar.gz"}}}},
        {
            "dataset_id": "fz",
            "dataset": {"source": {"dataset": {"version": "fuzz-up@1", "transform": WORDS[0]}}},
        },
    ],
    "StartUpload": [{"parent": "datasets/fuzz-up", "files": [{"path": "a.txt", "size": 3, "sha256": HEX}]}],
    "UploadBlobs": [{"sha256": HEX, "size": 3, "data": b"abc"}],
    "TransformDataset": [{"source_version": "fuzz-up@1", "transform": WORDS[0], "target": "fz"}],
    "CreateEnvironment": [
        {"environment_id": "fz", "environment": {"spec": {"python_version": "3.11", "requirements": "six\n"}}}
    ],
    "AcquireEnvironmentLease": [{"parent": "environments/fuzz-env", "holder": "h", "ttl": {"seconds": 60}}],
    "CreateJob": [
        {"job_id": "fz", "job": {"spec": {"command": ["true"], "resources": {"cpu_millis": 100}}}},
        {"job_id": "fz", "job": {"spec": {"command": ["true"], "workload": 2, "port": 8080}}},
    ],
    "CreateQueue": [{"queue_id": "fz", "queue": {"description": "q"}}],
    "UpdateQueue": [
        {
            "queue": {"name": "queues/fuzz-queue", "description": "q"},
            "update_mask": {"paths": ["description"]},
        }
    ],
    "CreateDeployment": [
        {
            "deployment_id": "fz",
            "deployment": {
                "model_name": "m",
                "base_model": {"path": "m"},
                "upstream": {"vllm": {"base_urls": [NOWHERE]}},
            },
        },
        {
            "deployment_id": "fz",
            "deployment": {
                "model_name": "m",
                "base_model": {"dataset_version": "fuzz-data@1"},
                "upstream": {"embedded": {}},
            },
        },
    ],
    "UpdateDeployment": [
        {
            "deployment": {"name": "deployments/fuzz-dep", "replicas": 2},
            "update_mask": {"paths": ["replicas"]},
        }
    ],
    "CreateApiKey": [{"api_key_id": "fz", "api_key": {"display_name": "k", "models": ["fuzz"]}}],
}


def leaves(values: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, value) of every field of a message dict that is not itself a message."""
    found: list[tuple[tuple[str, ...], Any]] = []
    for key, val in values.items():
        if isinstance(val, dict) and val:
            found += leaves(val, (*path, key))
        else:
            found.append(((*path, key), val))
    return found


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any], noise: dict[str, Any]) -> dict[str, Any]:
    """``template`` with one or two of its fields (at any depth) set to random values from
    ``noise``, or its URLs to odd ones: one bad field at a time is what gets past the checks of
    all the others."""
    out = copy.deepcopy(template)
    urls = [(path, val) for path, val in leaves(template) if URL_FIELDS.search(path[-1])]
    candidates = leaves(noise)
    for _ in range(draw(st.integers(1, 2))):
        if urls and (not candidates or draw(st.integers(0, 2)) == 0):
            path, old = draw(st.sampled_from(urls))
            val: Any = [draw(URLS)] if isinstance(old, list) else draw(URLS)
        elif candidates:
            path, val = draw(st.sampled_from(candidates))
        else:
            break
        target = out
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = val
    return out


def requests_for(method: MethodDescriptor, names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    noise = message(method.input_type, names)
    templates = TEMPLATES.get(method.name, [])
    if not templates:
        return noise
    valid = st.tuples(st.sampled_from(templates), noise).flatmap(lambda tn: mutated(*tn))
    return st.one_of(valid, valid, noise)


# -- the stack ------------------------------------------------------------------------------------

ADVERTISEGEN = "".join(
    json.dumps(
        {"content": f"类型#裙*颜色#红色*款式#{i}", "summary": f"一条红色的裙子 {i}"}, ensure_ascii=False
    )
    + "\n"
    for i in range(3)
).encode()
EXISTING = {
    "datasets": [
        "fuzz-up@1",
        "datasets/fuzz-up/versions/1",
        "datasets/fuzz-up",
        "fuzz-data",
        "datasets/fuzz-data",
        "datasets/fuzz-data/versions/1",
        "fuzz-data@1",
        "fuzz-up",
    ],
    "environments": ["fuzz-env", "environments/fuzz-env"],
    "trainer": ["fuzz-job", "jobs/fuzz-job", "default", "queues/default", "fuzz-queue", "queues/fuzz-queue"],
    "gateway": ["fuzz-dep", "deployments/fuzz-dep", "fuzz-key", "apiKeys/fuzz-key"],
}
ALL_NAMES = sorted({n for names in EXISTING.values() for n in names})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    root = Path(tmp_path_factory.mktemp("fuzz-stack"))
    env = {
        "TUNELAB_AUTH_TOKEN": TOKEN,
        "HTTP_PROXY": NOWHERE,
        "HTTPS_PROXY": NOWHERE,
        "ALL_PROXY": NOWHERE,
        "http_proxy": NOWHERE,
        "https_proxy": NOWHERE,
        "all_proxy": NOWHERE,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "HF_ENDPOINT": NOWHERE,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    per_service = {
        "environments": {"TUNELAB_DEFAULT_INDEX_URL": f"{NOWHERE}/simple", "TUNELAB_HTTP_RETRIES": "0"},
        "trainer": {"TUNELAB_AGENT_COMMAND": "false", "TUNELAB_GPUS": "0"},
        "gateway": {"TUNELAB_ENGINE_PYTHON": "false", "TUNELAB_API_KEY_AUTH": "on"},
    }
    with service_stack(root, env, per_service) as services:
        seed(services)
        yield services
        for channel in _CHANNELS.values():
            channel.close()
        _CHANNELS.clear()


def seed(services: dict[str, ServiceProcess]) -> None:
    """One resource of each kind, for the fuzz to find by name."""
    datasets, envs, trainer, gateway = (
        services[n] for n in ("datasets", "environments", "trainer", "gateway")
    )
    call(datasets, "CreateDataset", {"dataset_id": "fuzz-data", "dataset": {"source": {"empty": {}}}})
    call(datasets, "CreateDataset", {"dataset_id": "fuzz-up", "dataset": {"source": {"upload": {}}}})
    sha = hashlib.sha256(ADVERTISEGEN).hexdigest()
    files = [{"path": "train.json", "size": len(ADVERTISEGEN), "sha256": sha}]
    call(datasets, "StartUpload", {"parent": "datasets/fuzz-up", "files": files})
    call(datasets, "UploadBlobs", {"sha256": sha, "size": len(ADVERTISEGEN), "data": ADVERTISEGEN})
    call(datasets, "CommitDatasetVersion", {"name": "datasets/fuzz-up/versions/1"})
    spec = {"python_version": "3.11", "requirements": "six\n"}
    call(envs, "CreateEnvironment", {"environment_id": "fuzz-env", "environment": {"spec": spec}})
    call(trainer, "CreateQueue", {"queue_id": "fuzz-queue", "queue": {}})
    call(trainer, "CreateJob", {"job_id": "fuzz-job", "job": {"spec": {"command": ["true"]}}})
    upstream = {"vllm": {"base_urls": [NOWHERE]}}
    deployment = {"model_name": "fuzz", "base_model": {"path": "m"}, "upstream": upstream}
    call(gateway, "CreateDeployment", {"deployment_id": "fuzz-dep", "deployment": deployment})
    call(gateway, "CreateApiKey", {"api_key_id": "fuzz-key", "api_key": {}})


def service_descriptor(name: str) -> Any:
    (svc,) = PROTOS[name].DESCRIPTOR.services_by_name.values()
    return svc


def request_class(method: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.input_type)  # type: ignore[no-any-return]


def call(svc: ServiceProcess, method_name: str, values: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
    method = service_descriptor(svc.name).methods_by_name[method_name]
    return invoke(svc, method, [build(request_class(method), values)])


_CHANNELS: dict[str, grpc.Channel] = {}


def channel_to(svc: ServiceProcess) -> grpc.Channel:
    if svc.address not in _CHANNELS:
        _CHANNELS[svc.address] = open_channel(svc.address, TOKEN)
    return _CHANNELS[svc.address]


def invoke(
    svc: ServiceProcess, method: MethodDescriptor, requests: list[Message]
) -> tuple[grpc.StatusCode, str]:
    """Sends ``requests`` to ``method``; fails on a server error, else returns the status code and
    its details."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response = message_factory.GetMessageClass(method.output_type)
    channel = channel_to(svc)
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response.FromString,
    }
    try:
        if method.client_streaming:
            channel.stream_unary(path, **kwargs)(iter(requests), timeout=60)
        elif method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(requests[0], timeout=5)
            for i, _ in enumerate(stream):
                if i >= 2:  # a few messages are enough: hang up as a client that goes away does
                    stream.cancel()
                    break
        else:
            channel.unary_unary(path, **kwargs)(requests[0], timeout=60)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details = exc.details()  # type: ignore[attr-defined]
        assert code not in SERVER_ERRORS, (
            f"{method.full_name}: {code} {details}\n{requests}\n{incident(svc, details)}"
        )
        return code, details
    return grpc.StatusCode.OK, ""


def incident(svc: ServiceProcess, details: str) -> str:
    """The traceback the service logged for the incident named in ``details``."""
    found = re.search(r"incident ([0-9a-f]+)", details or "")
    if found:
        for line in svc.log.read_text(errors="replace").splitlines():
            if found.group(1) in line:
                return str(json.loads(line).get("traceback", line))
    return ""


DESTRUCTIVE = ("Delete", "Cancel", "Release", "GarbageCollect")


def cases() -> list[tuple[str, str]]:
    """Every RPC; those that remove what others find by name come last."""
    found = [(name, m.name) for name in PROTOS for m in service_descriptor(name).methods]
    return sorted(found, key=lambda case: case[1].startswith(DESTRUCTIVE))


@pytest.mark.parametrize(("service", "method_name"), cases(), ids=[f"{s}.{m}" for s, m in cases()])
def test_no_server_errors_for_random_requests(
    stack: dict[str, ServiceProcess], service: str, method_name: str
) -> None:
    svc = stack[service]
    method = service_descriptor(service).methods_by_name[method_name]
    cls = request_class(method)
    names = EXISTING[service] + ALL_NAMES
    count = st.integers(1, 3) if method.client_streaming else st.just(1)

    one_request = requests_for(method, names)

    @given(batch=count.flatmap(lambda n: st.lists(one_request, min_size=n, max_size=n)))
    @settings(
        max_examples=EXAMPLES * 3 if method_name in TEMPLATES else EXAMPLES,  # they reach deeper
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(batch: list[dict[str, Any]]) -> None:
        invoke(svc, method, [build(cls, values) for values in batch])

    fuzz()


# -- what the fuzz found, each pinned by a request that caused a server error ---------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FOUND: list[tuple[str, str, dict[str, Any], grpc.StatusCode, str]] = [
    # A source message left empty: its required field was missing from the dict made of it.
    (
        "datasets",
        "CreateDataset",
        {"dataset_id": "f1", "dataset": {"source": {"http": {}}}},
        INVALID,
        "set url",
    ),
    (
        "datasets",
        "CreateDataset",
        {"dataset_id": "f2", "dataset": {"source": {"git": {}}}},
        INVALID,
        "set url",
    ),
    # A NUL in a blob's name reached the filesystem.
    ("datasets", "ReadBlob", {"sha256": "\x00"}, INVALID, "not a lower-case hex sha256"),
    # An unclosed [ of an IPv6 address made the URL parsers raise.
    (
        "datasets",
        "CreateDataset",
        {"dataset_id": "f3", "dataset": {"source": {"git": {"url": "http://[::1"}}}},
        INVALID,
        "is not a URL",
    ),
    (
        "environments",
        "CreateEnvironment",
        {
            "environment_id": "f4",
            "environment": {
                "spec": {
                    "python_version": "3.11",
                    "requirements": "six",
                    "extra_indexes": [{"url": "http://[::1"}],
                }
            },
        },
        INVALID,
        "extra_indexes[0].url",
    ),
    (
        "gateway",
        "CreateDeployment",
        {
            "deployment_id": "f5",
            "deployment": {"base_model": {"path": "m"}, "upstream": {"vllm": {"base_urls": ["http://[::1"]}}},
        },
        INVALID,
        "is not http(s)://host:port",
    ),
    (
        "gateway",
        "CreateDeployment",
        {
            "deployment_id": "f6",
            "deployment": {
                "base_model": {"path": "m"},
                "upstream": {"vllm": {"base_urls": ["http://h:99999"]}},
            },
        },
        INVALID,
        "is not http(s)://host:port",
    ),
    # An enum value this version does not know.
    (
        "trainer",
        "CreateJob",
        {"job_id": "f7", "job": {"spec": {"command": ["true"], "type": 99}}},
        INVALID,
        "type 99",
    ),
]


@pytest.mark.parametrize(
    ("service", "method_name", "values", "code", "says"), FOUND, ids=[f"{f[0]}.{f[1]}:{f[4]}" for f in FOUND]
)
def test_what_the_fuzz_found_is_refused_with_a_reason(
    stack: dict[str, ServiceProcess],
    service: str,
    method_name: str,
    values: dict[str, Any],
    code: grpc.StatusCode,
    says: str,
) -> None:
    got, details = call(stack[service], method_name, values)
    assert (got, says in details) == (code, True), details


def test_timestamps_at_the_ends_of_their_range_are_kept(stack: dict[str, ServiceProcess]) -> None:
    """The last nanosecond of year 9999 came back from a float as 253402300800 s, past what a
    Timestamp holds: the key was stored, and every later ListApiKeys failed. Year 1 lost the zeros
    of its year in the environment spec, and every read of that environment failed."""
    last = {"seconds": 253402300799, "nanos": 999_999_999}
    key = {"api_key_id": "far-future", "api_key": {"expire_time": last}}
    assert call(stack["gateway"], "CreateApiKey", key)[0] == grpc.StatusCode.OK
    assert call(stack["gateway"], "ListApiKeys", {})[0] == grpc.StatusCode.OK
    spec = {"python_version": "3.11", "requirements": "six", "exclude_newer": {"seconds": -62135596800}}
    env = {"environment_id": "year-one", "environment": {"spec": spec}}
    assert call(stack["environments"], "CreateEnvironment", env)[0] == grpc.StatusCode.OK
    assert (
        call(stack["environments"], "GetEnvironment", {"name": "environments/year-one"})[0]
        == grpc.StatusCode.OK
    )


def test_every_service_is_healthy_and_logged_no_unexpected_error(stack: dict[str, ServiceProcess]) -> None:
    for svc in stack.values():
        assert svc.proc is not None and svc.proc.poll() is None, f"{svc.name} exited"
        with grpc.insecure_channel(svc.address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=60)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, svc.name
    unexpected = []
    for svc in stack.values():
        for line in svc.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "critical"):
                unexpected.append(f"{svc.name}: {entry.get('message')}\n{entry.get('traceback', '')[-1500:]}")
    assert not unexpected, "\n\n".join(unexpected)
