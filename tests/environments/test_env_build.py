"""Real builds from PyPI with small packages: build, watch, store, materialize elsewhere and run."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest

from envhelpers import FAILED, READY, log_text, rpc_error, run_python, spec, wait
from tunelab.common.storage.manifest import Manifest
from tunelab.environments.v1 import environments_pb2 as pb


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_build_watch_store_and_run_elsewhere(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    stack = request.getfixturevalue("envs" if backend == "local" else "envs_s3")
    client = stack.client
    created = client.create("basic", spec("six\nidna\n"), description="two small packages")
    assert created.state in (pb.Environment.STATE_PENDING, pb.Environment.STATE_RESOLVING)

    phases: set[str] = set()
    states: list[int] = []
    lines: list[pb.BuildLogLine] = []
    for resp in client.watch("basic"):
        states.append(resp.environment.state)
        phases.update(line.phase for line in resp.log_lines)
        lines.extend(resp.log_lines)
    env = client.get("basic")
    assert env.state == READY, env.error
    assert states[-1] == READY
    assert {"resolving", "installing", "packing", "storing"} <= phases
    assert [line.line_number for line in lines] == list(range(1, len(lines) + 1))
    assert len(env.env_key) == 64 and env.package_count == 2 and not env.cache_hit
    assert "six==" in env.lock and "--hash=sha256:" in env.lock
    assert env.resolved_python_version.startswith("3.11.") and env.resolved_platform
    art = env.artifact
    assert art.archive_format == pb.EnvironmentArtifact.ARCHIVE_FORMAT_TAR_ZSTD_LAYERS
    assert [layer.name.split("==")[0] for layer in art.layers] == ["venv", "idna", "six"]
    assert art.python_path == "bin/python" and art.size_bytes == env.size_bytes > 0

    # The manifest is in the common format at environments/<env_key>/manifest.json.
    key = f"environments/{env.env_key}/manifest.json"
    manifest = Manifest.from_json(stack.store.blobs.store.get_bytes(key), key)
    assert {f.sha256 for f in manifest.files} == {layer.sha256 for layer in art.layers}
    assert [f.sha256 for f in client.files("basic")] == [f.sha256 for f in manifest.files]
    assert manifest.digest() == art.manifest_sha256

    # Materialize somewhere else; the relocated venv runs.
    target = tmp_path / "elsewhere" / "env"
    result = client.pull("basic", target)
    assert result.env_key == env.env_key and not result.unchanged and result.bytes_fetched > 0
    ran = run_python(target, "import six, idna, sys; print(sys.prefix); print(six.__file__)")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[0] == str(target)
    assert ran.stdout.splitlines()[1].startswith(str(target))
    assert client.pull("basic", target).unchanged
    # A second directory comes from the client's blob cache without fetching.
    again = client.pull("basic", tmp_path / "second")
    assert again.bytes_fetched == 0 and run_python(tmp_path / "second", "import six").returncode == 0
    # The job agent's call: one unpacked copy per build under the cache dir.
    root = client.materialize("basic")
    assert root.name == env.env_key and run_python(root, "import idna").returncode == 0


def test_identical_spec_is_a_cache_hit_and_names_are_idempotent(envs) -> None:
    client = envs.client
    client.create("first", spec("packaging\n"))
    first = wait(client, "first")
    assert first.state == READY, first.error
    started = envs.store.jobs.builds_started

    # Another name, identical spec: READY in the create response itself, nothing rebuilt.
    second = client.create("second", spec("packaging\n"))
    assert second.state == READY and second.cache_hit and second.env_key == first.env_key
    assert envs.store.jobs.builds_started == started
    assert second.artifact.layers == first.artifact.layers
    assert "cache hit" in log_text(client, "second")

    # The same name and spec again returns it unchanged; a different spec needs replace.
    assert client.create("first", spec("packaging\n")).create_time == first.create_time
    code, details = rpc_error(lambda: client.create("first", spec("packaging\nsix\n")))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "replace" in details
    replaced = client.create("first", spec("packaging\nsix\n"), replace=True)
    assert replaced.env_key == "" and wait(client, "first").package_count == 2


def test_one_changed_package_reuses_the_other_layers(envs) -> None:
    client = envs.client
    client.create("base", spec("six\npackaging==24.1\n"))
    base = wait(client, "base")
    client.create("changed", spec("six\npackaging==24.2\n"))
    changed = wait(client, "changed")
    assert changed.state == READY and changed.env_key != base.env_key
    log = log_text(client, "changed")
    assert "1 of 2 packages reuse stored layers" in log
    # Resolved from uv's cache, asking the index only about the changed pin.
    assert "asking the index about packaging==24.2" in log and "resolved from index answers" in log
    shared = {layer.sha256 for layer in base.artifact.layers} & {
        layer.sha256 for layer in changed.artifact.layers
    }
    assert len(shared) == 2  # the venv layer and six's


def test_exclusions_drop_the_package_and_what_only_it_needed(envs, tmp_path: Path) -> None:
    client = envs.client
    client.create("excl", spec("six\nrequests\n", exclude=["requests"], include_system_site_packages=True))
    env = wait(client, "excl")
    assert env.state == READY, env.error
    names = {line.split("==")[0] for line in env.lock.splitlines() if "==" in line}
    assert names == {"six"}, env.lock  # requests, urllib3, idna, certifi, charset-normalizer gone
    target = tmp_path / "excl"
    client.pull("excl", target)
    ran = run_python(target, "import six; print(six.__file__)")
    assert ran.returncode == 0 and ran.stdout.startswith(str(target)), ran.stderr
    site = next(target.glob("lib/python3*/site-packages"))
    assert {p.name.split("-")[0].removesuffix(".py") for p in site.iterdir() if p.name[0] != "_"} == {"six"}
    # include_system_site_packages: the base interpreter's packages (here: pytest) are visible.
    ran = run_python(target, "import pytest; print(pytest.__file__)")
    assert ran.returncode == 0 and not ran.stdout.startswith(str(target))


def test_concurrent_identical_builds_build_once(envs) -> None:
    client = envs.client
    started = envs.store.jobs.builds_started
    barrier = threading.Barrier(3)

    def create(name: str) -> None:
        barrier.wait()
        client.create(name, spec("idna\nsix\n"))

    threads = [threading.Thread(target=create, args=(f"twin-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    envs_ = [wait(client, f"twin-{i}") for i in range(3)]
    assert all(e.state == READY for e in envs_), [e.error for e in envs_]
    assert len({e.env_key for e in envs_}) == 1
    assert envs.store.jobs.builds_started == started + 1
    assert sum(not e.cache_hit for e in envs_) == 1


def test_leases_protect_from_delete_and_gc(envs) -> None:
    client = envs.client
    for name, reqs in (("old", "six\n"), ("kept", "idna\n")):
        client.create(name, spec(reqs))
        assert wait(client, name).state == READY
    old, kept = client.get("old"), client.get("kept")
    lease = client.acquire_lease("kept", "jobs/abc/attempts/1", ttl_s=600)
    assert client.acquire_lease("kept", "jobs/abc/attempts/1").name == lease.name  # renewed, not a second
    assert len(client.leases("kept")) == 1 and client.get("kept").active_lease_count == 1

    code, details = rpc_error(lambda: client.delete("kept"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "jobs/abc/attempts/1" in details

    dry = client.gc(max_total_bytes=1, dry_run=True)
    assert list(dry.deleted_environments) == ["environments/old"] and dry.bytes_freed > 0
    assert client.get("old").state == READY
    done = client.gc(max_total_bytes=1)
    assert list(done.deleted_environments) == ["environments/old"] and done.environments_kept == 1
    assert rpc_error(lambda: client.get("old"))[0] == grpc.StatusCode.NOT_FOUND
    store = envs.store.blobs
    assert store.store.stat(f"environments/{old.env_key}/manifest.json") is None
    six_layer = old.artifact.layers[-1]
    assert not store.has(six_layer.sha256) and store.has(kept.artifact.layers[-1].sha256)

    client.release_lease(lease.name)
    client.release_lease(lease.name)  # releasing again is not an error
    client.delete("kept")
    assert store.store.stat(f"environments/{kept.env_key}/manifest.json") is None


def test_service_process_builds_through_grpc(service_process, tmp_path: Path, uv_cache: Path) -> None:
    from tunelab.cli.clients.environments import EnvironmentClient
    from tunelab.common.grpc.channel import open_channel

    svc = service_process(
        "environments",
        {
            "TUNELAB_DATA_DIR": str(tmp_path / "data"),
            "TUNELAB_UV_CACHE_DIR": str(uv_cache),
            "TUNELAB_AUTH_TOKEN": "t0ken",
        },
        tmp_path / "environments.log",
    ).start()
    channel = open_channel(svc.address, "t0ken")
    client = EnvironmentClient(channel, tmp_path / "cache")
    client.create("proc", spec("six\n"))
    env = wait(client, "proc")
    assert env.state == READY, env.error
    assert next(iter(client.list())).lock == ""  # List leaves the lock out
    channel.close()
    log_lines = [
        json.loads(line) for line in (tmp_path / "environments.log").read_text().splitlines() if line
    ]
    assert any(entry.get("service") == "environments" for entry in log_lines)
    assert env.state != FAILED


def test_layers_are_reproducible_and_big_builds_pack_in_processes(envs, monkeypatch) -> None:
    client = envs.client
    client.create("threads", spec("six\npackaging\n"))
    first = wait(client, "threads")
    client.delete("threads")  # its build and layers are gone from the store
    assert not envs.store.blobs.has(first.artifact.layers[-1].sha256)

    monkeypatch.setattr("tunelab.environments.builder.PROCESS_POOL_FILES", 0)  # as if it were big
    client.create("processes", spec("six\npackaging\n"))
    second = wait(client, "processes")
    assert second.state == READY and not second.cache_hit, second.error
    assert [layer.sha256 for layer in second.artifact.layers] == [
        layer.sha256 for layer in first.artifact.layers
    ]
