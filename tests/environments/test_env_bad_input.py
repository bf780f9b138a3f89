"""Bad input: a clear error that says what to do, a FAILED environment that keeps its log, and
nothing half-built left READY. Index passwords never show up in errors, logs or responses."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from envhelpers import FAILED, READY, log_text, rpc_error, spec, wait
from tunelab.environments.v1 import environments_pb2 as pb


def failed(client, name: str, environment_spec: pb.EnvironmentSpec) -> tuple[pb.Environment, str]:
    client.create(name, environment_spec)
    env = wait(client, name)
    assert env.state == FAILED, f"expected FAILED, got {env.state}"
    assert not env.HasField("artifact")
    return env, log_text(client, name)


def test_unknown_package(envs) -> None:
    env, log = failed(envs.client, "unknown", spec("six\ntunelab-no-such-package-xyz\n"))
    assert "no package named tunelab-no-such-package-xyz" in env.error
    assert "was not found in the package registry" in env.error  # uv's own explanation
    assert "tunelab-no-such-package-xyz" in log


def test_conflicting_pins_show_the_resolvers_explanation(envs) -> None:
    env, _ = failed(envs.client, "conflict", spec("six==1.16.0\nsix>=1.17\n"))
    assert "the requirements conflict" in env.error
    assert "you require six==1.16.0 and six>=1.17" in env.error


def test_unreachable_index(envs) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    index = pb.PackageIndex(url=f"http://127.0.0.1:{port}/simple")
    env, _ = failed(envs.client, "unreachable", spec("six\n", default_index=index))
    assert f"cannot reach the index http://127.0.0.1:{port}/simple" in env.error
    assert "Connection refused" in env.error


def test_index_answering_401_keeps_the_password_secret(envs, local_index) -> None:
    password = "s3cr3t-T0ken/+"
    index = pb.PackageIndex(url=local_index.private_url, username="bob", password=password)
    env, log = failed(envs.client, "private", spec("six\n", extra_indexes=[index]))
    assert "refused access (401 Unauthorized)" in env.error and local_index.private_url in env.error
    assert local_index.auth_seen and local_index.auth_seen[-1].startswith("Basic ")  # sent, to the index
    shown = envs.client.get("private")
    assert shown.spec.extra_indexes[0].username == "bob" and shown.spec.extra_indexes[0].password == ""
    for text in (env.error, log, str(shown), str(list(envs.client.list()))):
        assert password not in text and "s3cr3t" not in text
    state_db = (envs.data_dir / "environments" / "state.sqlite").read_bytes()
    assert password.encode() not in state_db


def test_build_failing_midway_keeps_its_log_and_leaves_nothing_ready(envs, local_index) -> None:
    index = pb.PackageIndex(url=local_index.url)
    env, log = failed(envs.client, "midway", spec("six\ntunelab-failing-build\n", extra_indexes=[index]))
    assert "building tunelab-failing-build==0.1 from source failed" in env.error
    assert "the compiler gave up halfway" in env.error and "compiling the extension" in log
    assert env.env_key and env.lock  # it got as far as resolving
    assert envs.store.catalog.get_build(env.env_key) is None
    assert envs.store.blobs.store.stat(f"environments/{env.env_key}/manifest.json") is None
    assert list((envs.data_dir / "environments" / "builds").iterdir()) == []  # staging cleaned
    code, details = rpc_error(lambda: envs.client.artifact("midway"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "FAILED, not READY" in details
    # The log is kept after FAILED, and a retry with replace is possible.
    assert envs.client.create("midway", env.spec, replace=True).state != FAILED


UNSAFE = [
    ("-e ./mypkg", "editable"),
    ("./local/pkg", "local path"),
    ("/opt/wheels/x-1.0-py3-none-any.whl", "local path"),
    ("pkg @ file:///tmp/pkg.whl", "local path"),
    ("--index-url https://evil.example/simple", "changes the index"),
    ("--extra-index-url=https://evil.example/simple", "changes the index"),
    ("-r other.txt", "is an option"),
]


@pytest.mark.parametrize(("line", "why"), UNSAFE)
def test_unsafe_requirement_lines_are_refused(envs, line: str, why: str) -> None:
    code, details = rpc_error(lambda: envs.client.create("unsafe", spec(f"six\n{line}\n")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "requirements line 2" in details and why in details and "allow_unsafe_requirements" in details
    # The spec may ask, but this server does not allow it.
    unsafe = spec(f"six\n{line}\n", allow_unsafe_requirements=True)
    code, details = rpc_error(lambda: envs.client.create("unsafe", unsafe))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "TUNELAB_ALLOW_UNSAFE_REQUIREMENTS" in details


def test_unsafe_lines_are_accepted_when_spec_and_server_allow(envs_unsafe, tmp_path: Path) -> None:
    project = tmp_path / "localpkg"
    project.mkdir()
    unsafe = spec(f"{project}\n", allow_unsafe_requirements=True)
    env = envs_unsafe.client.create("allowed", unsafe)
    assert env.name == "environments/allowed"  # accepted; the build itself may fail (no project there)


def test_missing_python_version_names_the_available_ones(envs) -> None:
    code, details = rpc_error(lambda: envs.client.create("py", spec("six\n", python_version="3.99")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Python 3.99 is not available" in details and "available: 3.11." in details


@pytest.mark.parametrize(
    ("env_id", "environment_spec", "needle"),
    [
        ("Bad_Name", spec("six\n"), "lower-case letters"),
        ("ok", spec("six\n", python_version="three"), "spec.python_version"),
        ("ok", spec("   \n"), "spec.requirements is empty"),
        ("ok", spec("six\n", exclude=["not a name"]), "spec.exclude"),
        ("ok", spec("six\n", default_index=pb.PackageIndex(url="ftp://x/simple")), "http(s) URL"),
        ("ok", spec("six\n", extra_indexes=[pb.PackageIndex(url="https://u:p@x/simple")]), "credentials"),
        ("ok", spec("six\n", torch_backend="cuda-latest"), "spec.torch_backend"),
    ],
)
def test_invalid_fields_name_the_field(envs, env_id: str, environment_spec, needle: str) -> None:
    code, details = rpc_error(lambda: envs.client.create(env_id, environment_spec))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details


def test_reading_what_does_not_exist(envs) -> None:
    code, details = rpc_error(lambda: envs.client.get("nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "tunelab env ls" in details
    envs.client.create("small", spec("six\n"))
    assert wait(envs.client, "small").state == READY
    req = pb.ReadEnvironmentArchiveRequest(name="environments/small", layer_sha256="0" * 64)
    code, details = rpc_error(lambda: list(envs.client.stub.ReadEnvironmentArchive(req)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a layer" in details
    code, _ = rpc_error(lambda: envs.client.artifact("small", env_key="f" * 64))
    assert code == grpc.StatusCode.NOT_FOUND
