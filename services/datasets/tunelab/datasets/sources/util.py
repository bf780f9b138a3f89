"""Small helpers every fetcher shares: retries with backoff, safe relative paths, quiet URLs."""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from tunelab.common.errors import TunelabError, Unavailable
from tunelab.datasets.sources.spec import FetchPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")
Progress = Callable[[str, int, int], None]
MAX_BACKOFF_S = 30.0


class UnsafePath(ValueError):
    """A name that would land outside the destination (the message says why)."""


def strip_userinfo(url: str) -> str:
    """The URL as recorded in provenance: credentials in the authority dropped, the rest kept."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def safe_relpath(raw: str) -> str | None:
    """Normalises an archive entry or object key to a relative POSIX path; None for the root itself.

    Raises :class:`UnsafePath` for absolute paths, drive letters, ``..`` segments and NUL bytes.
    Backslashes count as separators for the checks (archives made on Windows use them).
    """
    if "\x00" in raw:
        raise UnsafePath("it contains a NUL byte")
    if raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":" and raw[0].isalpha()):
        raise UnsafePath("it is an absolute path")
    if ".." in raw.replace("\\", "/").split("/"):
        raise UnsafePath("it climbs out of the folder with '..'")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    return "/".join(parts) or None


def is_inside(path: str | Path, root: Path) -> bool:
    """Whether ``path`` (already resolved) is ``root`` or below it."""
    resolved = Path(path)
    return resolved == root or root in resolved.parents


def clear_dir(directory: Path) -> None:
    """Removes everything inside ``directory`` (not the directory itself)."""
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def describe(exc: BaseException) -> str:
    if isinstance(exc, TunelabError):
        return exc.message
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def with_retries(
    fn: Callable[[], T],
    policy: FetchPolicy,
    *,
    transient: tuple[type[BaseException], ...],
    what: str,
    hint: str,
) -> T:
    """Calls ``fn`` up to ``policy.attempts`` times, backing off after transient failures.

    Once the attempts are spent the last failure becomes :class:`Unavailable` naming ``what``;
    every other exception passes through at once.
    """
    attempts = max(1, policy.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except transient as exc:
            if attempt == attempts:
                raise Unavailable(
                    f"cannot fetch {what} after {attempt} attempt{'s' if attempt > 1 else ''}: "
                    f"{describe(exc)}; {hint}"
                ) from exc
            delay = min(policy.retry_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
            delay *= 1 + random.random() / 4
            log.warning(
                "fetch failed, retrying",
                extra={
                    "source": what,
                    "attempt": attempt,
                    "error": describe(exc),
                    "retry_in_s": round(delay, 2),
                },
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


class Throttle:
    """Calls a progress callback at most every ``interval_s`` seconds (and always when forced)."""

    def __init__(self, progress: Progress, interval_s: float = 0.25) -> None:
        self.progress = progress
        self.interval_s = interval_s
        self.last = 0.0

    def __call__(self, message: str, done: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval_s:
            self.last = now
            self.progress(message, done, total)
