"""HTTP(S) sources: a guarded, resumable streaming download, unpacked when it is an archive.

Redirects are followed by hand so every hop passes the SSRF guard, and connections go to the
addresses the guard approved (see :class:`_GuardedBackend`). Connect errors, timeouts, cut-short
bodies and 5xx/429 answers are retried with backoff; a retry resumes with ``Range`` when the server
advertised byte ranges. The body is taken as sent (``Accept-Encoding: identity``, raw bytes), so the
recorded sha256 is the file's own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from email.message import Message
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from tunelab.common import netguard
from tunelab.common.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from tunelab.common.netguard import display_url
from tunelab.datasets.sources import archive
from tunelab.datasets.sources.spec import FetchPolicy, HttpSpec
from tunelab.datasets.sources.util import Progress, Throttle, strip_userinfo, with_retries

log = logging.getLogger(__name__)
MAX_REDIRECTS = 10
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "tunelab-datasets"


class _Transient(Exception):
    """A failure worth another attempt: a 5xx or 429 answer, a body cut short."""


def fetch_http(spec: HttpSpec, dest: Path, policy: FetchPolicy, progress: Progress) -> dict[str, str]:
    """Downloads ``spec.url`` into ``dest``, unpacking archives unless ``spec.no_extract``."""
    netguard.parse_url(spec.url)
    shown = display_url(spec.url)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        state = _State(work / "payload", Throttle(progress))
        with _client(policy) as client:
            with_retries(
                lambda: _attempt(client, spec, policy, state),
                policy,
                transient=(httpx.TransportError, Unavailable, _Transient),
                what=shown,
                hint="check the URL and that the host is reachable from the datasets service",
            )
        state.progress(f"downloaded {state.filename}", state.done, state.done, force=True)
        kind = None if spec.no_extract else archive.detect(state.path, state.filename)
        if kind:
            entries = archive.extract(state.path, kind, dest, policy, progress, label=state.filename)
        else:
            os.replace(state.path, dest / state.filename)
            entries = 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("downloaded source", extra={"url": shown, "bytes": state.done, "entries": entries})
    return {
        "url": strip_userinfo(spec.url),
        "filename": state.filename,
        "size": str(state.done),
        "sha256": state.hasher.hexdigest(),
        "etag": state.etag,
        "last_modified": state.last_modified,
        "unpacked": kind or "",
    }


@dataclass
class _State:
    """What survives between attempts, so a retry can resume where the last one stopped."""

    path: Path
    progress: Throttle
    done: int = 0
    total: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    filename: str = ""
    etag: str = ""
    last_modified: str = ""
    resumable: bool = False

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.done = 0
        self.hasher = hashlib.sha256()

    def begin(self, response: httpx.Response, spec: HttpSpec) -> None:
        self.restart()
        headers = response.headers
        self.filename = _filename(headers.get("content-disposition", ""), spec.url, str(response.url))
        self.etag = headers.get("etag", "")
        self.last_modified = headers.get("last-modified", "")
        self.resumable = headers.get("accept-ranges", "").lower() == "bytes"
        self.total = _int(headers.get("content-length"))

    def validator(self) -> str:
        """An If-Range value: a strong ETag, else Last-Modified ('' when neither)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def _attempt(client: httpx.Client, spec: HttpSpec, policy: FetchPolicy, state: _State) -> None:
    headers = {"Accept-Encoding": "identity"}
    ranged = bool(state.resumable and state.done and state.validator())
    if ranged:
        headers["Range"] = f"bytes={state.done}-"
        headers["If-Range"] = state.validator()
    response = _open(client, spec, policy, headers)
    try:
        _check_status(response, ranged, state)
        if response.status_code == 206:
            if _range_start(response) != state.done:
                state.resumable = False
                raise _Transient("the server resumed the download at the wrong offset; starting over")
            log.info("resuming download", extra={"url": display_url(spec.url), "offset": state.done})
        else:
            state.begin(response, spec)
        _stream(response, state, policy, display_url(spec.url))
    finally:
        response.close()


def _open(
    client: httpx.Client, spec: HttpSpec, policy: FetchPolicy, headers: dict[str, str]
) -> httpx.Response:
    """Sends the GET, following redirects by hand so each hop passes the guard."""
    url = httpx.URL(spec.url)
    user_headers = dict(spec.headers)
    for _ in range(MAX_REDIRECTS + 1):
        netguard.check_url(str(url), policy)
        request = client.build_request("GET", url, headers={**user_headers, **headers})
        response = client.send(request, stream=True)
        if not response.is_redirect:
            return response
        response.close()
        target = url.join(response.headers["location"])
        if target.scheme not in ("http", "https"):
            raise InvalidArgument(
                f"{display_url(str(url))} redirects to a {target.scheme!r} URL; only http(s) is fetched"
            )
        if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
            user_headers = {}  # credentials are for the origin the user named, not wherever it points
        url = target
    raise InvalidArgument(f"{display_url(spec.url)} redirects more than {MAX_REDIRECTS} times; check the URL")


def _check_status(response: httpx.Response, ranged: bool, state: _State) -> None:
    code = response.status_code
    shown = display_url(str(response.url))
    if code == 200 or (ranged and code == 206):
        return
    if code in (404, 410):
        raise NotFound(f"{shown} was not found (HTTP {code}); check the URL")
    if code in (401, 403, 407):
        raise PermissionDenied(
            f"{shown} refused access (HTTP {code}); if it needs credentials, pass them as source headers "
            "(for example Authorization)"
        )
    if code == 416 and ranged:
        state.resumable = False
        raise _Transient(f"{shown} refused to resume the download (HTTP 416); starting over")
    if code in RETRY_STATUS or code >= 500:
        raise _Transient(f"{shown} answered HTTP {code} {response.reason_phrase}")
    raise InvalidArgument(f"{shown} answered HTTP {code} {response.reason_phrase}; check the URL")


def _stream(response: httpx.Response, state: _State, policy: FetchPolicy, shown: str) -> None:
    limit = policy.max_download_bytes
    if state.total > limit:
        raise _too_big(shown, limit, state.total)
    with state.path.open("ab") as out:
        for chunk in response.iter_raw():
            state.done += len(chunk)
            if state.done > limit:
                raise _too_big(shown, limit, state.done)
            out.write(chunk)
            state.hasher.update(chunk)
            state.progress(f"downloading {state.filename}", state.done, state.total)
    if state.total and state.done != state.total:
        raise _Transient(f"the connection closed after {state.done} of {state.total} bytes")


def _too_big(shown: str, limit: int, size: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"{shown} is larger than {limit} bytes ({size} bytes so far; TUNELAB_MAX_DOWNLOAD_BYTES); "
        "raise the limit if the download is genuine"
    )


def _range_start(response: httpx.Response) -> int:
    """The first byte a 206 answer holds ('bytes 100-199/200' → 100; -1 when unreadable)."""
    value = response.headers.get("content-range", "")
    unit, _, rest = value.partition(" ")
    if unit.lower() != "bytes":
        return -1
    return _int(rest.partition("-")[0], default=-1)


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value or "")
    except ValueError:
        return default


def _filename(disposition: str, url: str, final_url: str) -> str:
    """From Content-Disposition, else the URL's last path segment, else the redirect target's."""
    candidates: list[str] = []
    if disposition:
        message = Message()
        message["content-disposition"] = disposition
        candidates.append(message.get_filename() or "")
    for candidate_url in (url, final_url):
        candidates.append(unquote(urlsplit(candidate_url).path.rstrip("/").rpartition("/")[2]))
    for candidate in candidates:
        name = _clean_name(candidate)
        if name:
            return name
    return "download"


def _clean_name(name: str) -> str:
    """A bare file name: no folders, no control characters, not '.' or '..'."""
    name = name.replace("\\", "/").rpartition("/")[2]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return "" if name in ("", ".", "..") else name[:255]


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    """Loading the CA bundle takes a while, so every fetch shares one (SSLContext is thread-safe)."""
    return httpx.create_ssl_context()


def _client(policy: FetchPolicy) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=_ssl_context(), retries=0)
    if not policy.allow_private_addresses:
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _GuardedBackend(policy)
    timeout = httpx.Timeout(
        connect=policy.connect_timeout_s,
        read=policy.read_timeout_s,
        write=policy.read_timeout_s,
        pool=policy.connect_timeout_s,
    )
    return httpx.Client(
        transport=transport, timeout=timeout, follow_redirects=False, headers={"User-Agent": USER_AGENT}
    )


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses the guard approves, resolving the name itself (no DNS rebinding).

    TLS still verifies the certificate against the host name: httpcore passes the origin's name as
    the server name when it starts TLS on the stream returned here.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = netguard.check_host(host, port, self.policy)
        except Unavailable as exc:
            raise httpcore.ConnectError(exc.message) from None
        error: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address to connect to for {host}")
