"""Hugging Face hub sources: a model, dataset or space repository at a revision.

The revision is first resolved to a commit, and that commit is downloaded, so the recorded
provenance is exactly what was fetched even when a branch moves meanwhile. A custom ``endpoint``
(a mirror) must pass the SSRF guard; the default hub is the operator's choice (``HF_ENDPOINT``).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub import errors as hf_errors
from huggingface_hub import utils as hf_utils

from tunelab.common import netguard
from tunelab.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TunelabError,
    Unavailable,
)
from tunelab.common.netguard import display_url
from tunelab.datasets.sources.spec import FetchPolicy, HfSpec
from tunelab.datasets.sources.util import Progress, describe, with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")
REPO_TYPES = ("model", "dataset", "space")


class _Transient(Exception):
    """The hub could not be reached, or answered 5xx."""


def fetch_hf(spec: HfSpec, dest: Path, policy: FetchPolicy, progress: Progress) -> dict[str, str]:
    """Downloads the repository's files at ``spec.revision`` into ``dest``."""
    repo_id = spec.repo_id.strip()
    if not repo_id:
        raise InvalidArgument("hf source: repo_id is empty; name a repository like org/name")
    if spec.repo_type not in REPO_TYPES:
        raise InvalidArgument(
            f"hf source: repo_type {spec.repo_type!r} is not one of {', '.join(REPO_TYPES)}"
        )
    endpoint = spec.endpoint.strip().rstrip("/") or None
    if endpoint and not policy.allow_private_addresses:
        with_retries(
            lambda: netguard.check_url(endpoint, policy),
            policy,
            transient=(Unavailable,),
            what=display_url(endpoint),
            hint="check the source's endpoint",
        )
    where = f"{spec.repo_type} {repo_id}" + (f" at {display_url(endpoint)}" if endpoint else "")
    requested = spec.revision.strip()
    token = spec.token or None
    progress(f"resolving {where}@{requested or 'main'}", 0, 0)

    def resolve() -> str:
        info = HfApi(endpoint=endpoint, token=token).repo_info(
            repo_id, repo_type=spec.repo_type, revision=requested or None
        )
        return str(info.sha or "")

    commit = _call(resolve, policy, where, requested)
    progress(f"downloading {where}@{commit or requested or 'main'}", 0, 0)

    def download() -> None:
        snapshot_download(
            repo_id,
            repo_type=spec.repo_type,
            revision=commit or requested or None,
            local_dir=dest,
            token=token,
            endpoint=endpoint,
            allow_patterns=list(spec.allow_patterns) or None,
            ignore_patterns=list(spec.ignore_patterns) or None,
        )

    _call(download, policy, where, requested)
    _drop_metadata(dest)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and not f.is_symlink())
    progress(f"downloaded {where}", size, size)
    log.info("downloaded hub source", extra={"source": where, "revision": commit, "bytes": size})
    return {
        "repo_id": repo_id,
        "repo_type": spec.repo_type,
        "revision": commit,
        "requested_revision": requested,
    }


def _call(fn: Callable[[], T], policy: FetchPolicy, where: str, revision: str) -> T:
    def attempt() -> T:
        try:
            return fn()
        except TunelabError:
            raise
        except Exception as exc:
            mapped = _map_error(exc, where, revision)
            if mapped is exc:
                raise
            raise mapped from exc

    return with_retries(
        attempt,
        policy,
        transient=(_Transient,),
        what=f"the hub {where}",
        hint="check that the hub (HF_ENDPOINT or the source's endpoint) is reachable from this service",
    )


def _map_error(exc: Exception, where: str, revision: str) -> Exception:
    """A typed error (or :class:`_Transient`) for whatever huggingface_hub raised."""
    if isinstance(exc, _hf("GatedRepoError")):
        return PermissionDenied(
            f"{where} is gated: accept its terms on the hub with an account, then give the source that "
            "account's token"
        )
    if isinstance(exc, _hf("DisabledRepoError")):
        return PermissionDenied(f"{where} is disabled on the hub; it cannot be fetched")
    if isinstance(exc, _hf("RepositoryNotFoundError")):
        return NotFound(f"{where} not found on the hub (or it is private: give the source a token)")
    if isinstance(exc, _hf("RevisionNotFoundError")):
        return NotFound(f"revision {revision!r} not found in {where}; name a branch, tag or commit")
    if isinstance(exc, _hf("OfflineModeIsEnabled")):
        return FailedPrecondition(
            "the datasets service runs with HF_HUB_OFFLINE set; unset it to fetch hub sources"
        )
    if isinstance(exc, (_hf("LocalEntryNotFoundError"), *_transport_errors())):
        return _Transient(describe(exc))
    if isinstance(exc, _hf("HfHubHTTPError")):
        return _http_error(exc, where)
    if isinstance(exc, _hf("EntryNotFoundError")):
        return NotFound(f"a file of {where} was not found ({describe(exc)})")
    if isinstance(exc, ValueError):
        return InvalidArgument(f"hf source {where}: {describe(exc)}")
    return exc


class _Never(Exception):
    """Stands in for an error class this huggingface_hub version does not have."""


def _hf(name: str) -> type[BaseException]:
    """An error class of huggingface_hub by name (they moved between modules across versions)."""
    found = getattr(hf_errors, name, None) or getattr(hf_utils, name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else _Never


def _http_error(exc: Any, where: str) -> Exception:
    status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
    if status in (401, 403):
        return PermissionDenied(
            f"the hub refused access to {where} (HTTP {status}); check the source's token"
        )
    if status == 429 or status >= 500:
        return _Transient(describe(exc))
    return InvalidArgument(f"the hub refused {where}: {describe(exc)}")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of whichever HTTP client this huggingface_hub uses."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (
        ("httpx", "TransportError"),
        ("httpx2", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _drop_metadata(dest: Path) -> None:
    """Removes the ``.cache/huggingface`` folder snapshot_download keeps inside ``local_dir``."""
    cache = dest / ".cache"
    shutil.rmtree(cache / "huggingface", ignore_errors=True)
    if cache.is_dir() and not any(cache.iterdir()):
        os.rmdir(cache)
