"""Where a spec makes a build fetch from, held to the SSRF guard (:mod:`tunelab.common.netguard`).

A spec names hosts in its indexes (``default_index``, ``extra_indexes``), in direct-URL requirements
(``pkg @ https://…``, ``git+https://…``, a bare ``https://…/pkg.whl``) and in index options of its
requirement lines (``--index-url``, ``--extra-index-url``, ``--find-links``). Each is checked when the
environment is created, so a spec cannot make the service reach loopback, link-local (cloud
metadata), private or other internal addresses unless the operator lets them through with
``TUNELAB_ALLOW_PRIVATE_ADDRESSES`` or ``TUNELAB_ALLOWED_NETWORKS`` (an on-prem index). The
service's own ``TUNELAB_DEFAULT_INDEX_URL`` is the operator's choice and is not checked.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tunelab.common import netguard
from tunelab.common.errors import InvalidArgument, PermissionDenied, Unavailable
from tunelab.environments.spec import Spec, logical_lines

# scheme://rest, up to whitespace or the end of a requirement (markers follow ';').
URL_RE = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*)://[^\s;\"'<>]*")
# The port a transport uses when the URL names none (VCS URLs: git+https://, git+ssh://, …).
DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}


def spec_urls(spec: Spec) -> list[tuple[str, str]]:
    """(where, url) of every URL in the spec a build would fetch from, ``where`` naming its field
    and, for requirement and constraint lines, the line."""
    found: list[tuple[str, str]] = []
    indexes = [("default_index", spec.default_index)] if spec.default_index is not None else []
    indexes += [(f"extra_indexes[{i}]", index) for i, index in enumerate(spec.extra_indexes)]
    for name, index in indexes:
        found.append((f"spec.{name}.url {netguard.display_url(index.url)!r}", index.url))
    for field, text in (("requirements", spec.requirements), ("constraints", spec.constraints)):
        for number, line in logical_lines(text):
            shown = URL_RE.sub(lambda m: netguard.display_url(m.group(0)), line.split(" --hash")[0])[:80]
            found += [(f"spec.{field} line {number} ({shown!r})", m.group(0)) for m in URL_RE.finditer(line)]
    return found


def check_egress(spec: Spec, policy: netguard.AddressPolicy) -> None:
    """Raises InvalidArgument naming the field or line of the first URL whose host the policy refuses.

    A host that does not resolve now is let through: the build reports it as an unreachable index
    or URL, as it would any other.
    """
    if policy.allow_private_addresses:
        return
    for where, url in spec_urls(spec):
        target = _target(where, url)
        if target is None:
            continue
        host, port = target
        try:
            netguard.check_host(host, port, policy, what=where)
        except PermissionDenied as exc:
            raise InvalidArgument(exc.message) from None
        except Unavailable:
            continue


def _target(where: str, url: str) -> tuple[str, int] | None:
    """(host, port) the URL connects to; None for a local file URL (refused elsewhere as a path)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"{where}: the URL is malformed ({exc}); fix it") from None
    transport = parts.scheme.lower().rpartition("+")[2]
    if transport == "file":
        return None
    if not parts.hostname:
        raise InvalidArgument(f"{where}: the URL names no host; fix it")
    return parts.hostname, port or DEFAULT_PORTS.get(transport, 0)
