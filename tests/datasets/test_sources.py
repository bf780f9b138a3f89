"""fetch_source against real servers: a local http.server, git repositories, moto's S3 server.

Only the Hugging Face hub is faked (no hub is reachable from here): those tests check how a spec
maps onto huggingface_hub's calls and how its errors map onto ours.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tunelab.common import netguard
from tunelab.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from tunelab.datasets.sources.fetch import fetch_source
from tunelab.datasets.sources.spec import FetchPolicy, GitSpec, HfSpec, HttpSpec, S3Spec

# Loopback servers need private addresses allowed; retries are quick so failures stay fast.
LOCAL = FetchPolicy(
    allow_private_addresses=True, attempts=3, retry_backoff_s=0.01, connect_timeout_s=2, read_timeout_s=5
)
GUARDED = replace(LOCAL, allow_private_addresses=False)
# The guard on, with only the test server's address let through (to test what lies beyond it).
LOOPBACK_ONLY = replace(GUARDED, allowed_networks=("127.0.0.1/32",))


# -- a real HTTP server -------------------------------------------------------------------------

Route = Callable[[SimpleHTTPRequestHandler], None]


@dataclass
class Server:
    root: Path
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path.lstrip('/')}"

    def headers_of(self, path: str) -> list[dict[str, str]]:
        return [headers for seen, headers in self.requests if seen == path]


class Handler(SimpleHTTPRequestHandler):
    """Serves the server's root; a path with a route gets the route's answer instead."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        state: Server = self.server.state  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        state.requests.append((path, {k.lower(): v for k, v in self.headers.items()}))
        route = state.routes.get(path)
        if route is not None:
            route(self)
        else:
            super().do_GET()


def answer(handler: SimpleHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    if "Content_Length" not in headers:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    state = Server(root, httpd.server_address[1])
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def make_tar(path: Path, members: Sequence[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tar_entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


# -- http: happy paths --------------------------------------------------------------------------


def test_http_plain_file_with_provenance(server: Server, dest: Path) -> None:
    data = b'{"content": "a", "summary": "b"}\n' * 1000
    (server.root / "train.jsonl").write_bytes(data)
    seen: list[tuple[str, int, int]] = []

    prov = fetch_source(HttpSpec(server.url("train.jsonl")), dest, LOCAL, lambda *a: seen.append(a))

    assert files_under(dest) == {"train.jsonl": data}
    assert prov["sha256"] == hashlib.sha256(data).hexdigest()
    assert prov["size"] == str(len(data))
    assert prov["url"] == server.url("train.jsonl")
    assert prov["last_modified"] and prov["unpacked"] == ""
    assert seen and seen[-1][1] == len(data)


def test_http_filename_from_content_disposition(server: Server, dest: Path) -> None:
    server.routes["/get"] = lambda h: answer(
        h, 200, b"a,b\n", Content_Disposition="attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.csv"
    )
    fetch_source(HttpSpec(server.url("get?id=7")), dest, LOCAL)
    assert files_under(dest) == {"résumé.csv": b"a,b\n"}


def test_http_zip_is_unpacked(server: Server, dest: Path) -> None:
    make_zip(server.root / "data.zip", {"train.json": b"[1]", "dev/dev.json": b"[2]", "empty/": b""})
    prov = fetch_source(HttpSpec(server.url("data.zip")), dest, LOCAL)
    assert files_under(dest) == {"train.json": b"[1]", "dev/dev.json": b"[2]"}
    assert (dest / "empty").is_dir()
    assert prov["unpacked"] == "zip"
    assert prov["sha256"] == hashlib.sha256((server.root / "data.zip").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("suffix", "mode"),
    [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz"), (".tar", "w")],
)
def test_http_tar_keeps_its_top_folder(server: Server, dest: Path, suffix: str, mode: str) -> None:
    folder = tar_entry("AdvertiseGen", tarfile.DIRTYPE)
    members = [
        (folder, None),
        (tar_entry("AdvertiseGen/train.json"), b"train"),
        (tar_entry("./AdvertiseGen/dev.json"), b"dev"),
        (tar_entry("AdvertiseGen/link.json", tarfile.SYMTYPE, "train.json"), None),
    ]
    make_tar(server.root / f"AdvertiseGen{suffix}", members, mode)

    fetch_source(HttpSpec(server.url(f"AdvertiseGen{suffix}")), dest, LOCAL)

    assert files_under(dest) == {"AdvertiseGen/dev.json": b"dev", "AdvertiseGen/train.json": b"train"}
    assert os.readlink(dest / "AdvertiseGen/link.json") == "train.json"


def test_http_no_extract_keeps_the_archive(server: Server, dest: Path) -> None:
    archive = make_zip(server.root / "data.zip", {"a.txt": b"a"})
    fetch_source(HttpSpec(server.url("data.zip"), no_extract=True), dest, LOCAL)
    assert files_under(dest) == {"data.zip": archive.read_bytes()}


def test_http_compressed_file_that_is_not_a_tar_is_kept(server: Server, dest: Path) -> None:
    import gzip

    (server.root / "train.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    fetch_source(HttpSpec(server.url("train.jsonl.gz")), dest, LOCAL)
    assert list(files_under(dest)) == ["train.jsonl.gz"]


def test_http_archive_without_a_name_is_sniffed(server: Server, dest: Path) -> None:
    make_zip(server.root / "blob", {"inside.txt": b"x"})
    fetch_source(HttpSpec(server.url("blob")), dest, LOCAL)
    assert files_under(dest) == {"inside.txt": b"x"}


def test_http_file_named_zip_that_is_not_one_is_refused(server: Server, dest: Path) -> None:
    (server.root / "data.zip").write_bytes(b"<html>Sign in to continue</html>")
    with pytest.raises(InvalidArgument, match=r"data\.zip is named like a \.zip archive but is not one"):
        fetch_source(HttpSpec(server.url("data.zip")), dest, LOCAL)
    assert not any(dest.iterdir())


def test_http_retries_5xx_then_succeeds(server: Server, dest: Path) -> None:
    (server.root / "data.txt").write_bytes(b"payload")
    calls = iter(range(100))

    def flaky(handler: SimpleHTTPRequestHandler) -> None:
        if next(calls) < 2:
            answer(handler, 503, b"busy")
        else:
            SimpleHTTPRequestHandler.do_GET(handler)

    server.routes["/data.txt"] = flaky
    fetch_source(HttpSpec(server.url("data.txt")), dest, LOCAL)
    assert files_under(dest) == {"data.txt": b"payload"}
    assert len(server.headers_of("/data.txt")) == 3


def test_http_5xx_every_time_is_unavailable(server: Server, dest: Path) -> None:
    server.routes["/down"] = lambda h: answer(h, 500, b"oops")
    with pytest.raises(Unavailable, match=r"after 3 attempts: .*HTTP 500"):
        fetch_source(HttpSpec(server.url("down")), dest, LOCAL)
    assert len(server.headers_of("/down")) == 3


def test_http_resumes_a_cut_download_with_range(server: Server, dest: Path) -> None:
    data = os.urandom(300_000)
    half = len(data) // 2

    def cut_then_resume(handler: SimpleHTTPRequestHandler) -> None:
        wanted = handler.headers.get("Range")
        if wanted is None:  # send half of the body, then drop the connection
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Accept-Ranges", "bytes")
            handler.send_header("ETag", '"v1"')
            handler.end_headers()
            handler.wfile.write(data[:half])
            handler.wfile.flush()
            handler.close_connection = True
            return
        start = int(wanted.removeprefix("bytes=").rstrip("-"))
        assert handler.headers.get("If-Range") == '"v1"'
        answer(
            handler,
            206,
            data[start:],
            Content_Range=f"bytes {start}-{len(data) - 1}/{len(data)}",
            ETag='"v1"',
        )

    server.routes["/big.bin"] = cut_then_resume
    prov = fetch_source(HttpSpec(server.url("big.bin")), dest, LOCAL)

    assert (dest / "big.bin").read_bytes() == data
    assert prov["sha256"] == hashlib.sha256(data).hexdigest()
    ranges = [h.get("range") for h in server.headers_of("/big.bin")]
    assert ranges[0] is None and ranges[-1] is not None and int(ranges[-1][6:-1]) > 0


def test_http_headers_are_sent_but_not_across_origins(server: Server, dest: Path) -> None:
    (server.root / "data.txt").write_bytes(b"x")
    server.routes["/here"] = lambda h: answer(h, 302, Location="/data.txt")
    server.routes["/away"] = lambda h: answer(h, 302, Location=server.url("data.txt", host="localhost"))
    spec_headers = {"Authorization": "Bearer s3cret"}

    fetch_source(HttpSpec(server.url("here"), headers=spec_headers), dest, LOCAL)
    assert server.headers_of("/data.txt")[-1]["authorization"] == "Bearer s3cret"

    other = dest.parent / "other"
    other.mkdir()
    fetch_source(HttpSpec(server.url("away"), headers=spec_headers), other, LOCAL)
    assert server.headers_of("/away")[-1]["authorization"] == "Bearer s3cret"
    assert "authorization" not in server.headers_of("/data.txt")[-1]


# -- http: errors -------------------------------------------------------------------------------


def test_http_404_is_not_found(server: Server, dest: Path) -> None:
    with pytest.raises(NotFound, match=rf"{server.url('missing.zip')} was not found \(HTTP 404\)"):
        fetch_source(HttpSpec(server.url("missing.zip")), dest, LOCAL)
    assert len(server.headers_of("/missing.zip")) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_403_are_permission_denied(server: Server, dest: Path, status: int) -> None:
    server.routes["/private"] = lambda h: answer(h, status)
    with pytest.raises(PermissionDenied, match=rf"refused access \(HTTP {status}\).*Authorization"):
        fetch_source(HttpSpec(server.url("private")), dest, LOCAL)


def test_http_unknown_host_is_unavailable_after_the_attempts(dest: Path) -> None:
    with pytest.raises(Unavailable, match=r"nonexistent\.invalid.* after 3 attempts"):
        fetch_source(HttpSpec("http://nonexistent.invalid/data.zip"), dest, LOCAL)


def test_http_refused_connection_is_unavailable(dest: Path) -> None:
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:9/.* after 3 attempts"):
        fetch_source(HttpSpec("http://127.0.0.1:9/data.zip"), dest, LOCAL)


def test_http_download_larger_than_the_limit(server: Server, dest: Path) -> None:
    (server.root / "big.bin").write_bytes(b"x" * 5000)
    small = replace(LOCAL, max_download_bytes=1000)
    with pytest.raises(ResourceExhausted, match="TUNELAB_MAX_DOWNLOAD_BYTES"):
        fetch_source(HttpSpec(server.url("big.bin")), dest, small)


def test_http_download_without_length_is_counted(server: Server, dest: Path) -> None:
    def endless(handler: SimpleHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: the body runs until the connection closes
        for _ in range(100):
            handler.wfile.write(b"x" * 1000)

    server.routes["/stream"] = endless
    with pytest.raises(ResourceExhausted, match=r"larger than 5000 bytes"):
        fetch_source(HttpSpec(server.url("stream")), dest, replace(LOCAL, max_download_bytes=5000))


def test_http_credentials_never_appear_in_errors(dest: Path) -> None:
    with pytest.raises(Unavailable) as caught:
        fetch_source(HttpSpec("http://user:tok3n@127.0.0.1:9/data.zip?sig=s3cret"), dest, LOCAL)
    assert "tok3n" not in str(caught.value) and "s3cret" not in str(caught.value)


def test_http_redirect_to_another_scheme_is_refused(server: Server, dest: Path) -> None:
    server.routes["/go"] = lambda h: answer(h, 302, Location="file:///etc/passwd")
    with pytest.raises(InvalidArgument, match="redirects to a 'file' URL"):
        fetch_source(HttpSpec(server.url("go")), dest, LOCAL)


def test_http_scheme_must_be_http(dest: Path) -> None:
    with pytest.raises(InvalidArgument, match="scheme 'ftp'"):
        fetch_source(HttpSpec("ftp://example.com/data.zip"), dest, GUARDED)


# -- the SSRF guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/data.txt",
        "http://localhost:{port}/data.txt",
        "http://[::1]:{port}/data.txt",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fe80::1%25nosuchif0]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://0.0.0.0:{port}/",
        "http://2130706433:{port}/",  # 127.0.0.1 written as one number
        "http://[::ffff:127.0.0.1]:{port}/",
    ],
)
def test_guard_refuses_local_and_metadata_addresses(server: Server, dest: Path, url: str) -> None:
    (server.root / "data.txt").write_bytes(b"secret")
    with pytest.raises(PermissionDenied, match="TUNELAB_ALLOW_PRIVATE_ADDRESSES=true"):
        fetch_source(HttpSpec(url.format(port=server.port)), dest, GUARDED)
    assert server.requests == []


def test_guard_rechecks_every_redirect(server: Server, dest: Path) -> None:
    server.routes["/go"] = lambda h: answer(h, 302, Location="http://169.254.169.254/latest/meta-data/")
    with pytest.raises(PermissionDenied, match=r"169\.254\.169\.254.*link-local"):
        fetch_source(HttpSpec(server.url("go")), dest, LOOPBACK_ONLY)
    assert len(server.requests) == 1


def test_guard_rechecks_a_redirect_to_another_loopback_address(server: Server, dest: Path) -> None:
    server.routes["/go"] = lambda h: answer(h, 301, Location=f"http://[::1]:{server.port}/data.txt")
    with pytest.raises(PermissionDenied, match="loopback"):
        fetch_source(HttpSpec(server.url("go")), dest, LOOPBACK_ONLY)


def test_guard_lets_an_allowed_network_through(server: Server, dest: Path) -> None:
    (server.root / "data.txt").write_bytes(b"ok")
    fetch_source(HttpSpec(server.url("data.txt")), dest, LOOPBACK_ONLY)
    assert files_under(dest) == {"data.txt": b"ok"}


def test_guard_pins_connections_to_approved_addresses(server: Server) -> None:
    # Past the per-hop check, the connection itself refuses what the guard refuses (no DNS rebinding).
    from tunelab.datasets.sources import http as http_source

    with http_source._client(GUARDED) as client, pytest.raises(PermissionDenied, match="loopback"):
        client.get(server.url("data.txt"))
    with http_source._client(LOOPBACK_ONLY) as client:
        assert client.get(server.url("nothing-here")).status_code == 404
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("8.8.8.8", ""),
        ("2606:4700::1111", ""),
        ("127.0.0.2", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("fd00:ec2::254", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.100.100.200", "not publicly routable"),
        ("::ffff:169.254.169.254", "link-local"),
    ],
)
def test_guard_classifies_addresses(address: str, blocked: str) -> None:
    import ipaddress

    reason = netguard.blocked_reason(ipaddress.ip_address(address))
    assert (blocked in reason) if blocked else reason == ""


def test_guard_rejects_a_bad_allowed_network(dest: Path) -> None:
    with pytest.raises(InvalidArgument, match="TUNELAB_ALLOWED_NETWORKS"):
        fetch_source(HttpSpec("http://127.0.0.1:9/"), dest, replace(GUARDED, allowed_networks=("nope",)))


# -- archives: unsafe entries and bombs ---------------------------------------------------------


def serve(server: Server, name: str, path: Path) -> HttpSpec:
    (server.root / name).write_bytes(path.read_bytes())
    return HttpSpec(server.url(name))


def test_zip_slip_entry_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    spec = serve(server, "evil.zip", make_zip(tmp_path / "a.zip", {"ok.txt": b"ok", "../evil": b"pwned"}))
    with pytest.raises(InvalidArgument, match=r"unsafe or unsupported entry '\.\./evil'.*'\.\.'"):
        fetch_source(spec, dest, LOCAL)
    assert not (tmp_path / "evil").exists()
    assert not any(dest.iterdir())


def test_zip_backslash_slip_entry_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    spec = serve(server, "evil.zip", make_zip(tmp_path / "a.zip", {"..\\..\\evil": b"pwned"}))
    with pytest.raises(InvalidArgument, match="climbs out"):
        fetch_source(spec, dest, LOCAL)


def test_absolute_entry_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    target = tmp_path / "abs-evil"
    spec = serve(server, "evil.tar.gz", make_tar(tmp_path / "a.tgz", [(tar_entry(str(target)), b"pwned")]))
    with pytest.raises(InvalidArgument, match="absolute path"):
        fetch_source(spec, dest, LOCAL)
    assert not target.exists()


def test_tar_symlink_escaping_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    members = [(tar_entry("data/passwd", tarfile.SYMTYPE, "../../../../etc/passwd"), None)]
    spec = serve(server, "evil.tar.gz", make_tar(tmp_path / "a.tgz", members))
    with pytest.raises(InvalidArgument, match=r"symlink to '\.\./\.\./\.\./\.\./etc/passwd', outside"):
        fetch_source(spec, dest, LOCAL)
    assert not any(dest.iterdir())


def test_tar_absolute_symlink_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    members = [(tar_entry("passwd", tarfile.SYMTYPE, "/etc/passwd"), None)]
    spec = serve(server, "evil.tar", make_tar(tmp_path / "a.tar", members, "w"))
    with pytest.raises(InvalidArgument, match="absolute"):
        fetch_source(spec, dest, LOCAL)


def test_tar_symlink_chain_cannot_escape(server: Server, dest: Path, tmp_path: Path) -> None:
    # Each link looks harmless alone: 'here' -> '.', then 'here/up' -> '..' would be dest/.. .
    members = [
        (tar_entry("here", tarfile.SYMTYPE, "."), None),
        (tar_entry("here/up", tarfile.SYMTYPE, ".."), None),
    ]
    spec = serve(server, "evil.tar", make_tar(tmp_path / "a.tar", members, "w"))
    with pytest.raises(InvalidArgument, match="inside the symlink here"):
        fetch_source(spec, dest, LOCAL)
    assert not any(dest.iterdir())


def test_tar_file_written_through_a_symlink_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [
        (tar_entry("escape", tarfile.SYMTYPE, str(outside)), None),
        (tar_entry("escape/pwned.txt"), b"pwned"),
    ]
    spec = serve(server, "evil.tar", make_tar(tmp_path / "a.tar", members, "w"))
    with pytest.raises(InvalidArgument):
        fetch_source(spec, dest, LOCAL)
    assert not any(outside.iterdir())


def test_tar_hardlink_escaping_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    members = [(tar_entry("passwd", tarfile.LNKTYPE, "../../../etc/passwd"), None)]
    spec = serve(server, "evil.tar", make_tar(tmp_path / "a.tar", members, "w"))
    with pytest.raises(InvalidArgument, match="hard link"):
        fetch_source(spec, dest, LOCAL)


def test_tar_hardlink_inside_is_kept(server: Server, dest: Path, tmp_path: Path) -> None:
    members = [(tar_entry("a.txt"), b"same"), (tar_entry("b.txt", tarfile.LNKTYPE, "a.txt"), None)]
    fetch_source(serve(server, "ok.tar", make_tar(tmp_path / "a.tar", members, "w")), dest, LOCAL)
    assert files_under(dest) == {"a.txt": b"same", "b.txt": b"same"}


def test_tar_device_file_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    members = [(tar_entry("dev/sda", tarfile.BLKTYPE), None)]
    spec = serve(server, "dev.tar", make_tar(tmp_path / "a.tar", members, "w"))
    with pytest.raises(InvalidArgument, match="device file"):
        fetch_source(spec, dest, LOCAL)


def test_zip_bomb_ratio_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    bomb = make_zip(tmp_path / "bomb.zip", {f"zeros{i}.bin": bytes(2 * 1024 * 1024) for i in range(4)})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ResourceExhausted, match="TUNELAB_MAX_ARCHIVE_RATIO"):
        fetch_source(serve(server, "bomb.zip", bomb), dest, LOCAL)
    assert not any(dest.iterdir())  # refused from the central directory, before writing


def test_tar_gz_bomb_ratio_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    bomb = make_tar(tmp_path / "bomb.tgz", [(tar_entry("zeros.bin"), bytes(8 * 1024 * 1024))])
    with pytest.raises(ResourceExhausted, match="TUNELAB_MAX_ARCHIVE_RATIO"):
        fetch_source(serve(server, "bomb.tar.gz", bomb), dest, LOCAL)
    assert not any(dest.iterdir())


@pytest.mark.parametrize("name", ["big.zip", "big.tar.gz"])
def test_archive_over_the_byte_limit_is_refused(
    server: Server, dest: Path, tmp_path: Path, name: str
) -> None:
    data = os.urandom(3000)
    archive = (
        make_zip(tmp_path / name, {"a.bin": data})
        if name.endswith(".zip")
        else make_tar(tmp_path / name, [(tar_entry("a.bin"), data)])
    )
    with pytest.raises(
        ResourceExhausted, match=r"more than 2000 bytes uncompressed \(TUNELAB_MAX_ARCHIVE_BYTES\)"
    ):
        fetch_source(serve(server, name, archive), dest, replace(LOCAL, max_archive_bytes=2000))


def test_archive_over_the_file_limit_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    members = [(tar_entry(f"f{i}.txt"), b"x") for i in range(5)]
    spec = serve(server, "many.tar.gz", make_tar(tmp_path / "a.tgz", members))
    with pytest.raises(ResourceExhausted, match=r"more than 3 entries \(TUNELAB_MAX_ARCHIVE_FILES\)"):
        fetch_source(spec, dest, replace(LOCAL, max_archive_files=3))


def test_zip_lying_about_its_sizes_is_refused(server: Server, dest: Path, tmp_path: Path) -> None:
    data = b"A" * 5000
    raw = bytearray(make_zip(tmp_path / "liar.zip", {"a.txt": data}).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local and central headers
        at = raw.index(signature) + offset
        raw[at : at + 4] = (10).to_bytes(4, "little")  # uncompressed size: 10 bytes
    (server.root / "liar.zip").write_bytes(bytes(raw))
    with pytest.raises(InvalidArgument):
        fetch_source(HttpSpec(server.url("liar.zip")), dest, LOCAL)
    assert not any(dest.iterdir())


def test_fetch_needs_an_empty_destination(dest: Path) -> None:
    (dest / "x").write_text("x")
    with pytest.raises(FailedPrecondition, match="empty directory"):
        fetch_source(HttpSpec("http://example.com/"), dest, LOCAL)


# -- git ----------------------------------------------------------------------------------------


@dataclass
class Repo:
    path: Path
    url: str
    first: str
    tagged: str
    main: str
    feature: str


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    path = tmp_path_factory.mktemp("git") / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    first = commit(path, {"README.md": "one\n"}, "one")
    tagged = commit(path, {"data/train.json": "[1]\n"}, "two")
    git(path, "tag", "-a", "v1", "-m", "release 1")
    main = commit(path, {"data/train.json": "[1, 2]\n"}, "three")
    git(path, "checkout", "-q", "-b", "feature")
    feature = commit(path, {"feature.txt": "f\n"}, "feature")
    git(path, "checkout", "-q", "main")
    git(path, "update-ref", "refs/custom/review", feature)
    return Repo(path, path.as_uri(), first, tagged, main, feature)


@pytest.mark.parametrize(
    ("ref", "commit_attr", "expected"),
    [
        ("", "main", {"README.md": b"one\n", "data/train.json": b"[1, 2]\n"}),
        ("main", "main", {"README.md": b"one\n", "data/train.json": b"[1, 2]\n"}),
        (
            "feature",
            "feature",
            {"README.md": b"one\n", "data/train.json": b"[1, 2]\n", "feature.txt": b"f\n"},
        ),
        ("v1", "tagged", {"README.md": b"one\n", "data/train.json": b"[1]\n"}),
        (
            "refs/custom/review",
            "feature",
            {"README.md": b"one\n", "data/train.json": b"[1, 2]\n", "feature.txt": b"f\n"},
        ),
        ("FIRST", "first", {"README.md": b"one\n"}),
        ("FIRST8", "first", {"README.md": b"one\n"}),
    ],
)
def test_git_checks_out_the_ref(repo: Repo, dest: Path, ref: str, commit_attr: str, expected: dict) -> None:
    sha = getattr(repo, commit_attr)
    ref = {"FIRST": repo.first, "FIRST8": repo.first[:8]}.get(ref, ref)

    prov = fetch_source(GitSpec(repo.url, ref=ref), dest, LOCAL)

    assert prov == {"url": repo.url, "ref": ref, "commit": sha}
    assert files_under(dest) == expected
    assert not (dest / ".git").exists()


def test_git_keeps_the_git_dir_when_asked(repo: Repo, dest: Path) -> None:
    prov = fetch_source(GitSpec(repo.url, ref="v1", keep_git_dir=True), dest, LOCAL)
    assert git(dest, "rev-parse", "HEAD") == prov["commit"] == repo.tagged


def test_git_bad_ref_is_not_found(repo: Repo, dest: Path) -> None:
    with pytest.raises(NotFound, match=rf"ref 'nope' not found in {repo.url}"):
        fetch_source(GitSpec(repo.url, ref="nope"), dest, LOCAL)
    assert not any(dest.iterdir())


def test_git_unknown_commit_is_not_found(repo: Repo, dest: Path) -> None:
    with pytest.raises(NotFound, match="ref '1234567890abcdef1234567890abcdef12345678' not found"):
        fetch_source(GitSpec(repo.url, ref="1234567890abcdef1234567890abcdef12345678"), dest, LOCAL)


def test_git_empty_repository_is_not_found(tmp_path: Path, dest: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(NotFound, match="it is empty"):
        fetch_source(GitSpec(empty.as_uri()), dest, LOCAL)


def test_git_credentials_never_appear_in_errors(dest: Path) -> None:
    with pytest.raises(Unavailable) as caught:
        fetch_source(GitSpec("http://user:tok3n@127.0.0.1:9/repo.git"), dest, LOCAL)
    assert "tok3n" not in str(caught.value) and "***@127.0.0.1:9" in str(caught.value)


def test_git_missing_repository_is_not_found(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(NotFound, match="no git repository at"):
        fetch_source(GitSpec((tmp_path / "nowhere").as_uri()), dest, LOCAL)


def test_git_guard_refuses_file_urls(repo: Repo, dest: Path) -> None:
    with pytest.raises(PermissionDenied, match="TUNELAB_ALLOW_PRIVATE_ADDRESSES=true"):
        fetch_source(GitSpec(repo.url), dest, GUARDED)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/repo.git", "https://localhost/repo.git", "http://169.254.169.254/repo.git"]
)
def test_git_guard_refuses_local_http_urls(dest: Path, url: str) -> None:
    with pytest.raises(PermissionDenied, match="TUNELAB_ALLOW_PRIVATE_ADDRESSES=true"):
        fetch_source(GitSpec(url), dest, GUARDED)


@pytest.mark.parametrize(
    "url", ["ssh://git@example.com/repo.git", "git@example.com:repo.git", "ext::sh -c id"]
)
def test_git_only_speaks_http(dest: Path, url: str) -> None:
    with pytest.raises(InvalidArgument, match="not an http"):
        fetch_source(GitSpec(url), dest, LOCAL)


def test_git_unreachable_host_is_unavailable(dest: Path) -> None:
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:9/repo\.git after 3 attempts"):
        fetch_source(GitSpec("http://127.0.0.1:9/repo.git"), dest, LOCAL)


def test_git_over_http_through_the_guard(repo: Repo, server: Server, dest: Path) -> None:
    # A "dumb http" server (static files): git cannot clone it shallowly, so the full-clone
    # fallback runs; the guard pins git to the approved address.
    bare = server.root / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", repo.url, str(bare)], check=True)
    git(bare, "update-server-info")
    prov = fetch_source(GitSpec(server.url("repo.git"), ref="v1"), dest, LOOPBACK_ONLY)
    assert prov["commit"] == repo.tagged
    assert files_under(dest) == {"README.md": b"one\n", "data/train.json": b"[1]\n"}


def test_git_symlink_out_of_the_repository_is_refused(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "evil"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    os.symlink("/etc/passwd", path / "passwd")
    commit(path, {"README.md": "x"}, "link")
    with pytest.raises(InvalidArgument, match="passwd is a symlink to '/etc/passwd'"):
        fetch_source(GitSpec(path.as_uri()), dest, LOCAL)
    assert not any(dest.iterdir())


# -- s3 (moto's server) -------------------------------------------------------------------------


@dataclass
class S3:
    """moto's S3 server (the session's, from tests/conftest.py) with this module's buckets."""

    endpoint: str
    access_key: str
    secret_key: str
    client: Any
    bucket: str

    def spec(self, bucket: str = "", prefix: str = "") -> S3Spec:
        return S3Spec(
            bucket=bucket or self.bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            secure=False,
            region="us-east-1",
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def make_bucket(self, suffix: str) -> str:
        name = f"{self.bucket}-{suffix}"
        self.client.make_bucket(bucket_name=name)
        return name

    def put(self, key: str, data: bytes, bucket: str = "") -> None:
        self.client.put_object(
            bucket_name=bucket or self.bucket, object_name=key, data=io.BytesIO(data), length=len(data)
        )


@pytest.fixture(scope="module")
def s3(moto_server: Any) -> S3:
    client = moto_server.client()
    bucket = f"sources-{os.getpid()}"
    client.make_bucket(bucket_name=bucket)
    return S3(moto_server.endpoint, moto_server.access_key, moto_server.secret_key, client, bucket)


def test_s3_prefix_is_downloaded(s3: S3, dest: Path) -> None:
    s3.put("advertisegen/train.json", b"train")
    s3.put("advertisegen/dev/dev.json", b"dev")
    s3.put("advertisegen/empty/", b"")  # a directory marker
    s3.put("advertisegen2/other.json", b"not me")
    big = os.urandom(200_000)
    s3.put("advertisegen/big.bin", big)
    seen: list[tuple[str, int, int]] = []

    prov = fetch_source(s3.spec(prefix="advertisegen"), dest, LOCAL, lambda *a: seen.append(a))

    assert files_under(dest) == {"train.json": b"train", "dev/dev.json": b"dev", "big.bin": big}
    assert prov == {
        "bucket": s3.bucket,
        "prefix": "advertisegen",
        "endpoint": s3.endpoint,
        "objects": "3",
        "bytes": str(len(big) + 8),
    }
    assert seen[-1][1:] == (len(big) + 8, len(big) + 8)


def test_s3_single_object_prefix(s3: S3, dest: Path) -> None:
    s3.put("single/train.jsonl", b"{}\n")
    fetch_source(s3.spec(prefix="single/train.jsonl"), dest, LOCAL)
    assert files_under(dest) == {"train.jsonl": b"{}\n"}


def test_s3_whole_bucket_and_endpoint_as_url(s3: S3, dest: Path) -> None:
    bucket = s3.make_bucket("whole")
    s3.put("a.txt", b"a", bucket)
    s3.put("deep/b.txt", b"b", bucket)
    spec = replace(s3.spec(bucket), endpoint=f"http://{s3.endpoint}", secure=True)
    fetch_source(spec, dest, LOCAL)
    assert files_under(dest) == {"a.txt": b"a", "deep/b.txt": b"b"}


def test_s3_missing_bucket_is_not_found(s3: S3, dest: Path) -> None:
    with pytest.raises(NotFound, match="bucket 'no-such-bucket' does not exist"):
        fetch_source(s3.spec("no-such-bucket", "x/"), dest, LOCAL)


def test_s3_empty_prefix_is_not_found(s3: S3, dest: Path) -> None:
    with pytest.raises(NotFound, match=f"no objects under s3://{s3.bucket}/nothing-here"):
        fetch_source(s3.spec(prefix="nothing-here"), dest, LOCAL)


def test_s3_key_escaping_the_destination_is_refused(s3: S3, dest: Path) -> None:
    bucket = s3.make_bucket("evil")
    s3.put("ok.txt", b"ok", bucket)
    s3.put("/etc/cron.d/x", b"pwned", bucket)  # key '/etc/...': would be an absolute path
    with pytest.raises(InvalidArgument, match="absolute path"):
        fetch_source(s3.spec(bucket), dest, LOCAL)
    assert not any(dest.iterdir())


def test_s3_file_and_folder_collision_is_refused(s3: S3, dest: Path) -> None:
    bucket = s3.make_bucket("clash")
    s3.put("a", b"file", bucket)
    s3.put("a/b", b"needs a folder", bucket)
    with pytest.raises(InvalidArgument, match="needs a folder"):
        fetch_source(s3.spec(bucket), dest, LOCAL)


def test_s3_over_the_download_limit(s3: S3, dest: Path) -> None:
    s3.put("limit/a.bin", b"x" * 3000)
    with pytest.raises(ResourceExhausted, match="TUNELAB_MAX_DOWNLOAD_BYTES"):
        fetch_source(s3.spec(prefix="limit/"), dest, replace(LOCAL, max_download_bytes=1000))


def test_s3_guard_refuses_a_local_endpoint(s3: S3, dest: Path) -> None:
    with pytest.raises(PermissionDenied, match="TUNELAB_ALLOW_PRIVATE_ADDRESSES=true"):
        fetch_source(s3.spec(prefix="advertisegen/"), dest, GUARDED)


def test_s3_unreachable_endpoint_is_unavailable(dest: Path) -> None:
    spec = S3Spec(bucket="datasets", endpoint="127.0.0.1:9", secure=False, region="us-east-1")
    with pytest.raises(Unavailable, match=r"s3://datasets/ at 127\.0\.0\.1:9 after 3 attempts"):
        fetch_source(spec, dest, LOCAL)


def test_s3_secret_never_appears_in_errors(s3: S3, dest: Path) -> None:
    with pytest.raises(NotFound) as caught:
        fetch_source(replace(s3.spec("no-such-bucket"), secret_key="sup3r-secret"), dest, LOCAL)
    assert "sup3r-secret" not in str(caught.value)


# -- hf (huggingface_hub faked: no hub is reachable from here) ----------------------------------


class FakeHub:
    """Stands in for HfApi and snapshot_download, recording what they were asked."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.api_args: dict[str, Any] = {}
        self.info_args: dict[str, Any] = {}
        self.download_args: dict[str, Any] = {}

    def api(self, **kwargs: Any) -> FakeHub:
        self.api_args = kwargs
        return self

    def repo_info(self, repo_id: str, **kwargs: Any) -> Any:
        self.info_args = {"repo_id": repo_id, **kwargs}
        if self.error is not None:
            raise self.error
        return type("Info", (), {"sha": "c0ffee" * 6 + "c0ff"})()

    def snapshot_download(self, repo_id: str, **kwargs: Any) -> str:
        self.download_args = {"repo_id": repo_id, **kwargs}
        local = Path(kwargs["local_dir"])
        (local / "config.json").write_text("{}")
        (local / ".cache" / "huggingface" / "download").mkdir(parents=True)
        (local / ".cache" / "huggingface" / "download" / "config.json.metadata").write_text("x")
        return str(local)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    from tunelab.datasets.sources import hf as hf_source  # huggingface_hub is slow to import

    fake = FakeHub()
    monkeypatch.setattr(hf_source, "HfApi", fake.api)
    monkeypatch.setattr(hf_source, "snapshot_download", fake.snapshot_download)
    return fake


def test_hf_spec_maps_onto_snapshot_download(hub: FakeHub, dest: Path) -> None:
    spec = HfSpec(
        repo_id="THUDM/chatglm3-6b",
        repo_type="model",
        revision="main",
        endpoint="https://hub.example.com",
        token="hf_secret",
        allow_patterns=("*.json", "*.safetensors"),
        ignore_patterns=("*.bin",),
    )
    prov = fetch_source(spec, dest, LOCAL)

    commit_sha = "c0ffee" * 6 + "c0ff"
    assert hub.api_args == {"endpoint": "https://hub.example.com", "token": "hf_secret"}
    assert hub.info_args == {"repo_id": "THUDM/chatglm3-6b", "repo_type": "model", "revision": "main"}
    assert hub.download_args == {
        "repo_id": "THUDM/chatglm3-6b",
        "repo_type": "model",
        "revision": commit_sha,
        "local_dir": dest,
        "token": "hf_secret",
        "endpoint": "https://hub.example.com",
        "allow_patterns": ["*.json", "*.safetensors"],
        "ignore_patterns": ["*.bin"],
    }
    assert files_under(dest) == {"config.json": b"{}"}
    assert not (dest / ".cache").exists()
    assert prov == {
        "repo_id": "THUDM/chatglm3-6b",
        "repo_type": "model",
        "revision": commit_sha,
        "requested_revision": "main",
    }
    assert "hf_secret" not in str(prov)


def test_hf_defaults_pass_none(hub: FakeHub, dest: Path) -> None:
    fetch_source(HfSpec(repo_id="org/data", repo_type="dataset"), dest, GUARDED)
    assert hub.api_args == {"endpoint": None, "token": None}
    assert hub.info_args["revision"] is None
    assert hub.download_args["allow_patterns"] is None and hub.download_args["ignore_patterns"] is None


def _hf_http_error(name: str, status: int) -> BaseException:
    """A real huggingface_hub error, built on a response of the HTTP library it uses."""
    import importlib

    from huggingface_hub import errors

    cls = getattr(errors, name)
    http = importlib.import_module(errors.HfHubHTTPError.__mro__[1].__module__.split(".")[0])
    response = http.Response(status, request=http.Request("GET", "https://hub.example.com/api/x"))
    return cls(f"{name} (test)", response=response)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("error", "expected", "match"),
    [
        (lambda: _hf_http_error("RepositoryNotFoundError", 404), NotFound, "not found on the hub"),
        (lambda: _hf_http_error("RevisionNotFoundError", 404), NotFound, "revision 'v9' not found"),
        (lambda: _hf_http_error("GatedRepoError", 403), PermissionDenied, "is gated"),
        (lambda: _hf_http_error("HfHubHTTPError", 401), PermissionDenied, "check the source's token"),
        (lambda: _hf_http_error("HfHubHTTPError", 503), Unavailable, "after 3 attempts"),
        (lambda: ConnectionError("connection refused"), Unavailable, "after 3 attempts"),
    ],
)
def test_hf_errors_are_mapped(
    hub: FakeHub, dest: Path, error: Callable[[], BaseException], expected: type, match: str
) -> None:
    hub.error = error()
    with pytest.raises(expected, match=match):
        fetch_source(HfSpec(repo_id="org/model", revision="v9"), dest, LOCAL)


def test_hf_guard_refuses_a_local_endpoint(hub: FakeHub, dest: Path) -> None:
    with pytest.raises(PermissionDenied, match="TUNELAB_ALLOW_PRIVATE_ADDRESSES=true"):
        fetch_source(HfSpec(repo_id="org/model", endpoint="http://127.0.0.1:8080"), dest, GUARDED)
    assert hub.info_args == {}
