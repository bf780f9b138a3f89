"""The SSRF guard over specs: a spec cannot make the service fetch from loopback, link-local (cloud
metadata), private or other internal addresses through a direct-URL requirement, a VCS URL, an index
option or an index, unless TUNELAB_ALLOWED_NETWORKS (or TUNELAB_ALLOW_PRIVATE_ADDRESSES) lets the
network through; then the build reaches it."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from envhelpers import FAILED, rpc_error, spec, wait
from tunelab.common.netguard import NetPolicy
from tunelab.environments.egress import check_egress
from tunelab.environments.spec import Spec
from tunelab.environments.v1 import environments_pb2 as pb


@dataclass
class Recorder:
    """An HTTP server on 127.0.0.1 that answers 404 and remembers every path asked for."""

    port: int
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rec.paths.append(self.path)
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rec
    server.shutdown()


REFUSED_LINES = [
    ("tl-pkg @ http://127.0.0.1:{port}/tl_pkg-1.0-py3-none-any.whl", "a loopback address"),
    ("http://127.0.0.1:{port}/tl_pkg-1.0-py3-none-any.whl", "a loopback address"),
    ("tl-pkg @ git+http://127.0.0.1:{port}/repo.git@main", "a loopback address"),
    ("tl-pkg @ git+https://169.254.169.254/org/repo.git", "link-local"),
    ("tl-pkg @ https://localhost:{port}/tl_pkg-1.0.tar.gz", "loopback"),
    ("tl-pkg @ https://[::1]:{port}/tl_pkg-1.0.tar.gz", "a loopback address"),
    ("tl-pkg @ https://10.1.2.3/tl_pkg-1.0.tar.gz ; python_version >= '3'", "a private address"),
    ("tl-pkg @ https://metadata.google.internal/x.whl", "cloud-metadata name"),
    ("--index-url http://127.0.0.1:{port}/simple", "a loopback address"),
    ("--extra-index-url=http://192.168.0.10/simple", "a private address"),
    ("--find-links http://169.254.169.254/links/", "link-local"),
    ("-i http://[fd00::1]/simple", "a private address"),
]


@pytest.mark.parametrize(("line", "why"), REFUSED_LINES)
def test_a_requirement_line_reaching_an_internal_address_is_refused(
    envs_guarded, recorder: Recorder, line: str, why: str
) -> None:
    text = f"six\n{line.format(port=recorder.port)}\n"
    code, details = rpc_error(
        lambda: envs_guarded.client.create("ssrf", spec(text, allow_unsafe_requirements=True))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "spec.requirements line 2" in details and why in details
    assert "TUNELAB_ALLOW_PRIVATE_ADDRESSES=true on the environments service" in details
    assert "TUNELAB_ALLOWED_NETWORKS" in details
    assert rpc_error(lambda: envs_guarded.client.get("ssrf"))[0] == grpc.StatusCode.NOT_FOUND
    assert recorder.paths == []


def test_constraints_and_indexes_are_guarded_too(envs_guarded, recorder: Recorder) -> None:
    local = f"http://127.0.0.1:{recorder.port}"
    cases = [
        (
            spec("six\n", constraints=f"six @ {local}/six-1.17.0-py2.py3-none-any.whl\n"),
            "spec.constraints line 1",
        ),
        (spec("six\n", default_index=pb.PackageIndex(url=f"{local}/simple")), "spec.default_index.url"),
        (
            spec(
                "six\n",
                extra_indexes=[
                    pb.PackageIndex(url="https://mirror.example.invalid/simple"),  # no DNS answer: passes
                    pb.PackageIndex(url="http://169.254.169.254/simple", username="u", password="p"),
                ],
            ),
            "spec.extra_indexes[1].url",
        ),
    ]
    for environment_spec, where in cases:
        code, details = rpc_error(lambda s=environment_spec: envs_guarded.client.create("ssrf", s))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and where in details, details
        assert "TUNELAB_ALLOW_PRIVATE_ADDRESSES" in details
    assert recorder.paths == []


def test_a_git_file_url_is_a_local_path(envs) -> None:
    code, details = rpc_error(
        lambda: envs.client.create("local", spec("six\ntl-pkg @ git+file:///srv/repo\n"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "requirements line 2" in details and "points at a local path" in details


def test_an_allowed_network_lets_the_build_reach_it(envs, recorder: Recorder) -> None:
    # The `envs` service allows 127.0.0.1/32 (TUNELAB_ALLOWED_NETWORKS), as an on-prem index needs.
    url = f"http://127.0.0.1:{recorder.port}/tl_pkg-1.0-py3-none-any.whl"
    envs.client.create("onprem", spec(f"tl-pkg @ {url}\n"))
    assert wait(envs.client, "onprem").state == FAILED  # the recorder answers 404
    assert "/tl_pkg-1.0-py3-none-any.whl" in recorder.paths


def test_allow_private_addresses_turns_the_guard_off() -> None:
    internal = Spec(
        requirements="tl-pkg @ http://169.254.169.254/x.whl\n--index-url http://10.0.0.1/simple\n"
    )
    check_egress(internal, NetPolicy("environments", allow_private_addresses=True))
    with pytest.raises(Exception, match="link-local"):
        check_egress(internal, NetPolicy("environments"))
    check_egress(internal, NetPolicy("environments", allowed_networks=("169.254.169.254/32", "10.0.0.0/8")))


def test_a_bad_allowed_network_stops_the_service_at_start(tmp_path) -> None:
    from tunelab.common.errors import InvalidArgument
    from tunelab.common.settings import load_settings
    from tunelab.environments.settings import EnvironmentSettings

    with pytest.raises(
        InvalidArgument, match=r"TUNELAB_ALLOWED_NETWORKS: .*'10\.0\.0\.0/33' is not a network"
    ):
        load_settings(EnvironmentSettings, data_dir=tmp_path, allowed_networks=("10.0.0.0/33",))
