"""Checks a source before a dataset is created for it, so that a source refused outright (a
malformed URL, a scheme that is not fetched, a host the SSRF guard refuses) is an error of the
create call and leaves no dataset behind to block the name.

What only the fetch can find out (a source that is gone, a bad archive) fails the first version
instead; such a dataset, with nothing but FAILED versions, does not keep its name from a new create.
"""

from __future__ import annotations

from tunelab.common import netguard
from tunelab.common.errors import Unavailable
from tunelab.datasets.sources import git, s3
from tunelab.datasets.sources.spec import FetchPolicy, GitSpec, HfSpec, HttpSpec, S3Spec, SourceSpec


def check_source(spec: SourceSpec, policy: FetchPolicy) -> None:
    """Raises what the fetch would raise at once for this source. A host that does not resolve
    right now passes: the fetch retries it and reports it on the version."""
    try:
        if isinstance(spec, HttpSpec):
            netguard.check_url(spec.url, policy)
        elif isinstance(spec, GitSpec):
            git.check_url(spec.url, policy)
        elif isinstance(spec, S3Spec):
            s3.check_endpoint(spec, policy)
        elif isinstance(spec, HfSpec) and spec.endpoint.strip():
            netguard.check_url(spec.endpoint.strip().rstrip("/"), policy)
    except Unavailable:
        return
