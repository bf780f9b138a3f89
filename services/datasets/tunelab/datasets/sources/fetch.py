"""Fetching a dataset's source (http, git, s3, hf) into a local folder, safely.

:func:`fetch_source` is the one entry point; each kind lives in its own module. Every fetch obeys
a :class:`FetchPolicy`: the SSRF guard (:mod:`netguard`), timeouts, bounded retries, and size limits
for downloads and archives. On any failure the destination is emptied again, so a half-fetched or
half-unpacked source never lingers.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tunelab.datasets.sources.git import fetch_git
from tunelab.datasets.sources.http import fetch_http
from tunelab.datasets.sources.s3 import fetch_s3
from tunelab.datasets.sources.spec import FetchPolicy, GitSpec, HfSpec, HttpSpec, S3Spec
from tunelab.datasets.sources.util import Progress, clear_dir


def _fetch_hf(spec: HfSpec, dest: Path, policy: FetchPolicy, progress: Progress) -> dict[str, str]:
    from tunelab.datasets.sources.hf import fetch_hf  # huggingface_hub takes seconds to import

    return fetch_hf(spec, dest, policy, progress)


FETCHERS: dict[type[Any], Callable[[Any, Path, FetchPolicy, Progress], dict[str, str]]] = {
    HttpSpec: fetch_http,
    GitSpec: fetch_git,
    S3Spec: fetch_s3,
    HfSpec: _fetch_hf,
}


def fetch_source(
    spec: HttpSpec | GitSpec | S3Spec | HfSpec,
    dest: Path,
    policy: FetchPolicy,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, str]:
    """Fetches the source's content into the empty directory ``dest`` (laid out as the dataset's files).

    Returns provenance, all values strings: for http ``url, filename, size, sha256`` (of the file as
    downloaded), ``etag, last_modified, unpacked`` ('zip', 'tar' or ''); for git ``url, ref, commit``;
    for s3 ``bucket, prefix, endpoint, objects, bytes``; for hf ``repo_id, repo_type, revision``
    (the commit) and ``requested_revision``. No credential ever appears in it.

    ``progress(message, bytes_done, bytes_total or 0)`` is called now and then. Raises the typed
    errors of :mod:`tunelab.common.errors`; ``dest`` is left empty when it does.
    """
    fetcher = FETCHERS.get(type(spec))
    if fetcher is None:
        raise InvalidArgument(f"source kind {getattr(spec, 'kind', type(spec).__name__)!r} is not fetched")
    dest = Path(dest)
    if not dest.is_dir() or any(dest.iterdir()):
        raise FailedPrecondition(f"fetch destination {dest} must be an existing, empty directory")
    try:
        provenance = fetcher(spec, dest, policy, progress or _ignore)
    except OSError as exc:
        clear_dir(dest)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"no space left under {dest} while fetching the {spec.kind} source; free disk space or move "
                "TUNELAB_DATA_DIR to a bigger disk"
            ) from exc
        raise
    except BaseException:
        clear_dir(dest)
        raise
    return {key: str(value) for key, value in provenance.items()}


def _ignore(message: str, done: int, total: int) -> None:
    """The progress callback when the caller passes none."""
