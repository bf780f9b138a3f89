"""Size limits: CreateEnvironment refuses an oversized spec with INVALID_ARGUMENT naming the field
and the limit (the CLI shows it and nothing is created), and ListEnvironments stays well under
gRPC's 4 MB default message size, for a client that keeps the default, whatever is stored."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner, Result

from envhelpers import FAILED, rpc_error, spec, wait
from tunelab.environments import convert, limits
from tunelab.environments.v1 import environments_pb2 as pb
from tunelab.environments.v1 import environments_pb2_grpc

GRPC_DEFAULT_MAX = 4 * 1024 * 1024


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CLI call reads the user's config file, cache or stack."""
    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cli-cache"))
    for var in ("TUNELAB_ENVIRONMENTS_ADDR", "TUNELAB_TOKEN", "TUNELAB_OUTPUT", "TUNELAB_PORT_BASE"):
        monkeypatch.delenv(var, raising=False)


def cli(envs, *args: str) -> Result:
    from tunelab.cli.main import app

    return CliRunner().invoke(app, ["--environments-addr", envs.address, *args])


def padded(first_line: str, size: int, tag: str) -> str:
    """A requirements text of about ``size`` bytes: one requirement and comment lines."""
    comment = f"# {tag} " + "x" * 90 + "\n"
    return first_line + "\n" + comment * (size // len(comment))


def test_oversized_fields_are_invalid_argument_naming_field_and_limit(envs) -> None:
    client = envs.client
    big = padded("six", limits.MAX_TEXT_BYTES + 1024, "big")
    code, details = rpc_error(lambda: client.create("big", spec(big)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.requirements" in details and f"the limit is {limits.MAX_TEXT_BYTES:,}" in details

    many = "six\n" + "#\n" * limits.MAX_TEXT_LINES  # small in bytes, too many lines
    code, details = rpc_error(lambda: client.create("many", spec(many)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.requirements" in details and f"the limit is {limits.MAX_TEXT_LINES:,}" in details

    code, details = rpc_error(lambda: client.create("c", spec("six\n", constraints=big)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.constraints" in details

    code, details = rpc_error(
        lambda: client.create("d", spec("six\n"), description="d" * (limits.MAX_DESCRIPTION_CHARS + 1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "description" in details and f"the limit is {limits.MAX_DESCRIPTION_CHARS:,}" in details

    labels = {"team": "v" * (limits.MAX_LABEL_VALUE_CHARS + 1)}
    code, details = rpc_error(lambda: client.create("l", spec("six\n"), labels=labels))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "labels['team']" in details

    exclude = [f"p{i}" for i in range(limits.MAX_EXCLUDE + 1)]
    code, details = rpc_error(lambda: client.create("x", spec("six\n", exclude=exclude)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "spec.exclude" in details

    assert list(client.list()) == []  # nothing refused was stored


def test_cli_shows_the_limit_and_creates_nothing(envs, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text(padded("six", 5 * 1024 * 1024, "big"))  # the 5 MB file of the report
    result = cli(envs, "env", "create", "big", "-r", str(big))
    assert result.exit_code != 0
    assert "spec.requirements" in result.output and f"{limits.MAX_TEXT_BYTES:,}" in result.output
    assert "Traceback" not in result.output
    assert list(envs.client.list()) == []


def test_list_stays_small_and_get_returns_everything(envs, local_index) -> None:
    client = envs.client
    index = pb.PackageIndex(url=local_index.url)
    size = limits.MAX_TEXT_BYTES - 4096  # large but allowed
    names = [f"big-{i}" for i in range(8)]  # whole, ~4 MB of requirements and constraints
    for name in names:
        text = padded("tunelab-failing-build", size // 2, name)
        client.create(name, spec(text, default_index=index, constraints=text.replace(name, "c")))
    for name in names:
        assert wait(client, name).state == FAILED  # the package's build fails; its spec is stored

    # A client that keeps gRPC's default message size lists them.
    channel = grpc.insecure_channel(envs.address)
    try:
        stub = environments_pb2_grpc.EnvironmentServiceStub(channel)
        resp = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=1000))
    finally:
        channel.close()
    assert resp.ByteSize() < GRPC_DEFAULT_MAX // 16
    assert sorted(e.name for e in resp.environments) == sorted(f"environments/{n}" for n in names)
    for env in resp.environments:
        assert env.spec.requirements == "" and env.spec.constraints == "" and env.lock == ""
        assert env.spec.python_version == "3.11" and env.spec.default_index.url == local_index.url

    full = client.get("big-0")
    assert full.spec.requirements.startswith("tunelab-failing-build\n# big-0 ")
    assert len(full.spec.requirements) > size // 2 - 200 and full.spec.constraints

    result = cli(envs, "env", "ls")
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in names) and "FAILED" in result.stdout


def test_a_page_stops_at_its_byte_budget_and_the_token_continues(envs, local_index) -> None:
    client = envs.client
    index = pb.PackageIndex(url=local_index.url)
    for i in range(3):
        client.create(
            f"env-{i}", spec("tunelab-failing-build\n", default_index=index), description="d" * 1500
        )
    views, token = envs.store.list_environments("", 0)
    assert len(views) == 3 and token == ""

    one = convert.list_to_pb(views, token).environments[0].ByteSize()
    assert convert.list_to_pb(views, token).environments[0].description.endswith("…")
    page = convert.list_to_pb(views, token, max_bytes=one + one // 2)
    assert len(page.environments) == 1 and page.next_page_token
    rest, _ = envs.store.list_environments(page.next_page_token, 0)
    assert [v.record.id for v in rest] == [v.record.id for v in views[1:]]
    for i in range(3):
        wait(client, f"env-{i}")
