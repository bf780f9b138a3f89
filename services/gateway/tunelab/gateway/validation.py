"""Checks a deployment spec before it is stored: names, sources, upstream, uniqueness of served names."""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import urlsplit

from tunelab.common.errors import AlreadyExists, InvalidArgument
from tunelab.common.names import check_id, parse_name
from tunelab.gateway.specs import RUNTIMES, DeploymentSpec, ModelSource, UpstreamSpec

# Model names appear in URL paths (/v2/models/{name}/generate): no '/'.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_model_name(name: str, what: str) -> str:
    if not MODEL_NAME_RE.match(name):
        raise InvalidArgument(
            f"{what} {name!r} is not a valid model name: 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit (no '/': it is part of URL paths)"
        )
    return name


def check_source(source: ModelSource, what: str) -> None:
    if bool(source.dataset_version) == bool(source.path):
        raise InvalidArgument(f"{what}: set exactly one of dataset_version and path")
    if source.dataset_version and not source.dataset_version.startswith("datasets/"):
        raise InvalidArgument(
            f"{what}.dataset_version {source.dataset_version!r}: "
            "use datasets/NAME or datasets/NAME/versions/N"
        )


def check_workload(up: UpstreamSpec) -> UpstreamSpec:
    """The workload upstream with its references written out (``environments/x``, ``queues/x``)."""
    what = "deployment.upstream.workload"
    if up.runtime not in RUNTIMES:
        raise InvalidArgument(f"{what}.runtime: set RUNTIME_VLLM or RUNTIME_ENGINE")
    if min(up.gpu_count, up.cpu_millis, up.memory_bytes) < 0:
        raise InvalidArgument(f"{what}: gpu_count, cpu_millis and memory_bytes must not be negative")
    if any(not arg for arg in up.args):
        raise InvalidArgument(f"{what}.args: an argument is empty")
    env = (
        up.environment and f"environments/{parse_name(up.environment, 'environments', f'{what}.environment')}"
    )
    queue = up.queue and f"queues/{parse_name(up.queue, 'queues', f'{what}.queue')}"
    return replace(up, environment=env, queue=queue)


def _is_http_url(url: str) -> bool:
    """Whether ``url`` is http(s)://host[:port], with a port (if any) in range."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number or out of range
    except ValueError:  # and urlsplit itself for an unclosed [ of an IPv6 address
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_spec(spec: DeploymentSpec, others: list[DeploymentSpec]) -> DeploymentSpec:
    """The spec with defaults filled in; InvalidArgument or AlreadyExists naming the field."""
    spec = spec.with_changes(
        id=check_id(spec.id, "deployment_id"),  # stored lower-case; served under the name as written
        model_name=spec.model_name or spec.id,
        replicas=max(1, spec.replicas),
    )
    check_model_name(spec.model_name, "deployment.model_name")
    check_source(spec.base, "deployment.base_model")
    names = [spec.model_name]
    for i, a in enumerate(spec.adapters):
        check_model_name(a.name, f"deployment.adapters[{i}].name")
        check_source(a.source, f"deployment.adapters[{i}].source")
        if a.name in names:
            raise InvalidArgument(
                f"deployment.adapters[{i}].name {a.name!r} is used twice in this deployment"
            )
        names.append(a.name)
    if spec.default_adapter and spec.default_adapter not in names[1:]:
        raise InvalidArgument(
            f"deployment.default_adapter {spec.default_adapter!r} is not one of the adapters"
        )
    if spec.max_in_flight < 0:
        raise InvalidArgument("deployment.max_in_flight must not be negative")
    up = spec.upstream
    if up.kind == "vllm":
        if not up.base_urls:
            raise InvalidArgument("deployment.upstream.vllm.base_urls: give the URL of each vLLM server")
        for url in up.base_urls:
            if not _is_http_url(url):
                raise InvalidArgument(
                    f"deployment.upstream.vllm.base_urls: {url!r} is not http(s)://host:port"
                )
    elif up.kind == "workload":
        spec = spec.with_changes(upstream=check_workload(up))
    elif up.kind != "embedded":
        raise InvalidArgument("deployment.upstream: set vllm (with base_urls), embedded or workload")
    for other in others:
        clash = set(names) & set(other.served_names())
        if clash:
            raise AlreadyExists(
                f"model name {sorted(clash)[0]!r} is already served by deployment {other.id!r}"
            )
    return spec
