"""git sources: a repository at a ref, fetched with the ``git`` CLI as shallowly as the ref allows.

Branches and tags are cloned with ``--depth 1 --branch``; a full commit sha is fetched alone
(depth 1) and falls back to a full clone when the server refuses unadvertised objects; a short sha
needs the full history to be resolved. git never prompts (``GIT_TERMINAL_PROMPT=0``), speaks only
http(s) (and file:// when private addresses are allowed), connects only to the addresses the guard
approved (``http.curloptResolve``) and does not follow redirects while the guard is on.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from tunelab.common import netguard
from tunelab.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from tunelab.common.netguard import display_url
from tunelab.datasets.sources.spec import FetchPolicy, GitSpec
from tunelab.datasets.sources.util import (
    Progress,
    clear_dir,
    is_inside,
    strip_userinfo,
    with_retries,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
HEX = re.compile(r"[0-9a-fA-F]{4,64}")
FULL_SHA_LENGTHS = (40, 64)
TRANSIENT_MARKS = (
    "could not resolve host",
    "failed to connect",
    "connection refused",
    "connection timed out",
    "operation timed out",
    "couldn't connect",
    "connection reset",
    "the requested url returned error: 5",
    "rpc failed",
    "early eof",
    "the remote end hung up",
    "transfer closed",
    "empty reply",
    "ssl_read",
    "gnutls",
)
AUTH_MARKS = (
    "terminal prompts disabled",
    "could not read username",
    "could not read password",
    "authentication failed",
    "returned error: 401",
    "returned error: 403",
)
MISSING_MARKS = (
    "repository not found",
    "does not appear to be a git repository",
    "not a git repository",
    "returned error: 404",
    "returned error: 410",
)
REACH_HINT = "check the URL and that the host is reachable from the datasets service"
REDIRECT_MARKS = ("returned error: 30",)
REFUSED_WANT_MARKS = ("not our ref", "unadvertised object", "no such remote ref", "couldn't find remote ref")


class _GitFailed(Exception):
    """A git command failed; ``stderr`` says why (credentials already scrubbed)."""

    def __init__(self, args: list[str], stderr: str) -> None:
        super().__init__(stderr)
        self.command = args[0] if args else "git"
        self.stderr = stderr


class _Transient(_GitFailed):
    """A network failure worth another attempt."""


def fetch_git(spec: GitSpec, dest: Path, policy: FetchPolicy, progress: Progress) -> dict[str, str]:
    """Checks out ``spec.url`` at ``spec.ref`` into ``dest``; provenance names the resolved commit."""
    git = _Git(spec.url.strip(), policy)
    ref = spec.ref.strip()
    if ref.startswith("-"):
        raise InvalidArgument(f"git ref {ref!r} is not a branch, tag or commit")
    progress(f"listing refs of {git.shown}", 0, 0)
    refs = git.retrying(git.ls_remote, "list the refs of")
    progress(f"cloning {git.shown} at {ref or 'its default branch'}", 0, 0)
    commit = _checkout(git, ref, refs, dest)
    _check_symlinks(dest, git.shown)
    if not spec.keep_git_dir:
        shutil.rmtree(dest / ".git", ignore_errors=True)
    log.info("cloned git source", extra={"url": git.shown, "ref": ref, "commit": commit})
    return {"url": strip_userinfo(git.url), "ref": ref, "commit": commit}


def _checkout(git: _Git, ref: str, refs: dict[str, str], dest: Path) -> str:
    if ref in ("", "HEAD"):
        git.retrying(lambda: git.clone(dest, []), "clone", dest)
    elif f"refs/heads/{ref}" in refs or f"refs/tags/{ref}" in refs:
        git.retrying(lambda: git.clone(dest, ["--branch", ref]), "clone", dest)
    elif ref.startswith("refs/") and ref in refs:
        git.retrying(lambda: git.fetch_one(dest, ref), "fetch", dest)
    elif HEX.fullmatch(ref):
        return _checkout_commit(git, ref, dest)
    else:
        raise NotFound(
            f"ref {ref!r} not found in {git.shown}: name a branch, a tag or a commit sha "
            f"(`git ls-remote {git.shown}` lists the branches and tags)"
        )
    return git.head(dest, ref)


def _checkout_commit(git: _Git, sha: str, dest: Path) -> str:
    if len(sha) in FULL_SHA_LENGTHS:
        try:
            git.retrying(lambda: git.fetch_one(dest, sha), "fetch", dest)
            return git.head(dest, sha)
        except (NotFound, InvalidArgument) as exc:
            log.info(
                "single-commit fetch refused; cloning in full",
                extra={"url": git.shown, "detail": exc.message},
            )
            clear_dir(dest)
    git.retrying(
        lambda: git.run(["clone", "--quiet", "--no-checkout", "--", git.url, str(dest)]), "clone", dest
    )
    try:
        commit = git.rev_parse(dest, f"{sha}^{{commit}}")
    except _GitFailed:
        raise NotFound(
            f"ref {sha!r} not found in {git.shown}: no commit with that sha is reachable from its branches "
            "or tags; check the sha"
        ) from None
    git.run(["checkout", "--quiet", "--detach", commit], cwd=dest)
    return commit


def _check_symlinks(dest: Path, shown: str) -> None:
    """A checkout may hold symlinks; none may point outside the repository."""
    root = dest.resolve()
    for folder, dirs, files in os.walk(dest):
        dirs[:] = [d for d in dirs if not (folder == str(dest) and d == ".git")]
        for name in (*dirs, *files):
            path = Path(folder, name)
            if path.is_symlink() and not is_inside(os.path.realpath(path), root):
                raise InvalidArgument(
                    f"{shown}: {path.relative_to(dest)} is a symlink to {os.readlink(path)!r}, outside the "
                    "repository; tunelab refuses it, remove the link from the repository"
                )


class _Git:
    """Runs git for one URL with the guard's settings, a timeout and no prompts."""

    def __init__(self, url: str, policy: FetchPolicy) -> None:
        self.url = url
        self.shown = display_url(url)
        self.policy = policy
        self.config = with_retries(
            lambda: _guard(url, policy), policy, transient=(Unavailable,), what=self.shown, hint=REACH_HINT
        )
        self.secret = urlsplit(url).netloc.rpartition("@")[0] if "://" in url else ""
        self.env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GCM_INTERACTIVE": "never",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_PROTOCOL_FROM_USER": "0",
            "LC_ALL": "C",
            "LANGUAGE": "",
        }

    def run(self, args: list[str], cwd: Path | None = None) -> str:
        command = ["git", *self.config, *args]
        timeout = self.policy.git_timeout_s
        try:
            proc = subprocess.run(
                command,
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except FileNotFoundError:
            raise FailedPrecondition(
                "the git command is not installed on the datasets service; install git"
            ) from None
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"git {args[0]} of {self.shown} took longer than {timeout:g} s (TUNELAB_GIT_TIMEOUT_S); "
                "raise the limit for a big repository"
            ) from None
        if proc.returncode:
            stderr = self._scrub(proc.stderr.strip())
            failure = _Transient if _has(stderr, TRANSIENT_MARKS) else _GitFailed
            raise failure(args, stderr)
        return proc.stdout

    def retrying(self, fn: Callable[[], T], action: str, dest: Path | None = None) -> T:
        """Runs ``fn`` with retries on network failures, mapping git's errors to typed ones."""

        def attempt() -> T:
            if dest is not None:
                clear_dir(dest)
            return fn()

        try:
            return with_retries(
                attempt,
                self.policy,
                transient=(_Transient,),
                what=self.shown,
                hint=REACH_HINT,
            )
        except _GitFailed as exc:
            raise self._error(exc, action) from None

    def ls_remote(self) -> dict[str, str]:
        refs: dict[str, str] = {}
        for line in self.run(["ls-remote", "--", self.url]).splitlines():
            sha, _, name = line.partition("\t")
            if name:
                refs[name] = sha
        return refs

    def clone(self, dest: Path, extra: list[str]) -> None:
        try:
            self.run(["clone", "--quiet", "--depth", "1", *extra, "--", self.url, str(dest)])
        except _GitFailed as exc:
            if "shallow" not in exc.stderr.lower():
                raise
            clear_dir(dest)  # a dumb http server cannot serve shallow clones
            self.run(["clone", "--quiet", *extra, "--", self.url, str(dest)])

    def fetch_one(self, dest: Path, what: str) -> None:
        self.run(["init", "--quiet", str(dest)])
        self.run(["remote", "add", "origin", self.url], cwd=dest)
        self.run(["fetch", "--quiet", "--depth", "1", "--no-tags", "origin", what], cwd=dest)
        self.run(["checkout", "--quiet", "--detach", "FETCH_HEAD"], cwd=dest)

    def rev_parse(self, dest: Path, what: str) -> str:
        return self.run(["rev-parse", "--verify", "--quiet", what], cwd=dest).strip()

    def head(self, dest: Path, ref: str) -> str:
        """The commit checked out; NotFound when the repository has none (an empty repository)."""
        try:
            return self.rev_parse(dest, "HEAD")
        except _GitFailed:
            raise NotFound(
                f"{self.shown} has no commit at {ref or 'its default branch'}; it is empty"
            ) from None

    def _scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def _error(self, exc: _GitFailed, action: str) -> Exception:
        detail = exc.stderr.splitlines()[-1] if exc.stderr else f"git {exc.command} failed"
        if _has(exc.stderr, AUTH_MARKS):
            return PermissionDenied(
                f"{self.shown} asks for credentials or refused them ({detail}); for a private repository "
                "put a token in the URL (https://<token>@host/repo.git)"
            )
        if _has(exc.stderr, MISSING_MARKS):
            return NotFound(f"no git repository at {self.shown} ({detail}); check the URL")
        if _has(exc.stderr, REDIRECT_MARKS):
            return InvalidArgument(
                f"{self.shown} redirects elsewhere ({detail}); redirects are not followed, use the final URL"
            )
        if _has(exc.stderr, REFUSED_WANT_MARKS):
            return NotFound(f"ref not found in {self.shown} ({detail}); check the ref")
        return InvalidArgument(f"cannot {action} {self.shown}: {detail}")


def _has(text: str, marks: tuple[str, ...]) -> bool:
    lower = text.lower()
    return any(mark in lower for mark in marks)


def check_url(url: str, policy: FetchPolicy) -> None:
    """Refuses a URL the policy forbids, as a fetch would before running git (a host that does not
    resolve raises Unavailable)."""
    _guard(url, policy)


def _guard(url: str, policy: FetchPolicy) -> list[str]:
    """git ``-c`` options that hold it to the policy; refuses URLs the policy forbids."""
    if url.startswith("-"):
        raise InvalidArgument(f"git URL {url!r} is not a URL")
    try:
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    except ValueError:  # an unclosed [ of an IPv6 address
        raise InvalidArgument(f"git URL {url!r} is not a URL") from None
    protocols = ["protocol.allow=never", "protocol.https.allow=always", "protocol.http.allow=always"]
    if scheme == "file":
        if not policy.allow_private_addresses:
            raise PermissionDenied(
                f"git URL {display_url(url)} reads the service's own disk; set "
                "TUNELAB_ALLOW_PRIVATE_ADDRESSES=true on the datasets service to allow file:// sources"
            )
        protocols.append("protocol.file.allow=always")
    elif scheme not in ("http", "https"):
        raise InvalidArgument(
            f"git URL {display_url(url)} is not an http(s) URL; use https://host/repo.git (ssh and git:// "
            "are not supported)"
        )
    options = [
        *protocols,
        "http.lowSpeedLimit=1000",
        f"http.lowSpeedTime={max(1, int(policy.read_timeout_s))}",
    ]
    if scheme != "file" and not policy.allow_private_addresses:
        _, host, port = netguard.parse_url(url)
        addresses = netguard.check_url(url, policy)
        pinned = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        options += ["http.followRedirects=false", f"http.curloptResolve={host}:{port}:{pinned}"]
    return [arg for option in options for arg in ("-c", option)]
