"""The SSRF guard: what a service fetches on a user's behalf may only reach public addresses,
unless its settings say otherwise (``TUNELAB_ALLOW_PRIVATE_ADDRESSES``, ``TUNELAB_ALLOWED_NETWORKS``).

A fetch names a host; the guard resolves it and refuses the whole host when any address it
resolves to is loopback, link-local (cloud metadata at 169.254.169.254), private, unspecified,
multicast, reserved or otherwise not publicly routable, and it refuses well-known metadata names
outright. Callers that connect themselves connect to the addresses the guard returned (pinning them),
so a DNS answer that changes between the check and the connection cannot slip through.

The datasets service guards its sources with it, the environments service the URLs and indexes of a
spec; both read the same two settings.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Protocol
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import AfterValidator

from tunelab.common.errors import InvalidArgument, PermissionDenied, Unavailable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKED_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_CHECKS = (
    ("is_loopback", "a loopback address"),
    ("is_link_local", "a link-local address (cloud metadata lives there)"),
    ("is_unspecified", "the unspecified address"),
    ("is_multicast", "a multicast address"),
    ("is_private", "a private address"),
    ("is_reserved", "a reserved address"),
)


class AddressPolicy(Protocol):
    """What the guard reads from a service's settings."""

    @property
    def allow_private_addresses(self) -> bool: ...

    @property
    def allowed_networks(self) -> tuple[str, ...]: ...

    @property
    def service(self) -> str:
        """The service whose settings these are (named in the hint of a refusal)."""
        ...


@dataclass(frozen=True)
class NetPolicy:
    """An :class:`AddressPolicy` built from a service's settings."""

    service: str
    allow_private_addresses: bool = False
    # Networks reachable even while private addresses are refused (CIDRs, e.g. an internal mirror).
    allowed_networks: tuple[str, ...] = ()


def hint(policy: AddressPolicy) -> str:
    return (
        f"set TUNELAB_ALLOW_PRIVATE_ADDRESSES=true on the {policy.service} service (or add the network "
        "to TUNELAB_ALLOWED_NETWORKS) if this host is meant to be reachable"
    )


def display_url(url: str) -> str:
    """The URL without credentials or query string, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def parse_url(url: str, schemes: tuple[str, ...] = ("http", "https")) -> tuple[SplitResult, str, int]:
    """Splits a URL, checking its scheme and host; returns (parts, host, port)."""
    shown = display_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"source URL {shown} is malformed ({exc}); fix the URL") from None
    if parts.scheme not in schemes:
        raise InvalidArgument(
            f"source URL {shown} has scheme {parts.scheme or '(none)'!r}; use {' or '.join(schemes)}"
        )
    host = parts.hostname or ""
    if not host:
        raise InvalidArgument(f"source URL {shown} names no host; write it as {schemes[-1]}://host/path")
    return parts, host, port or DEFAULT_PORTS.get(parts.scheme, 0)


def check_url(url: str, policy: AddressPolicy, schemes: tuple[str, ...] = ("http", "https")) -> list[str]:
    """Checks a URL's scheme and host against the policy; returns the host's allowed addresses."""
    _, host, port = parse_url(url, schemes)
    return check_host(host, port, policy, what=display_url(url))


def check_host(host: str, port: int, policy: AddressPolicy, *, what: str = "") -> list[str]:
    """Resolves ``host`` and returns its addresses, refusing it when the policy forbids any of them.

    Raises :class:`PermissionDenied` for a forbidden host and :class:`Unavailable` when the name
    does not resolve (callers retry that).
    """
    what = what or host
    name = host.lower().rstrip(".").strip("[]")
    if policy.allow_private_addresses:
        return resolve(name, port, what)
    refusal = _refused(host, policy, what)
    if refusal:
        raise PermissionDenied(refusal)
    addresses = resolve(name, port, what)
    allowed = _allowed_networks(policy.allowed_networks)
    for text in addresses:
        reason = blocked_reason(ipaddress.ip_address(text.split("%")[0]), allowed)
        if reason:
            raise PermissionDenied(f"{what}: host {host!r} resolves to {text}, {reason}; {hint(policy)}")
    return addresses


def _refused(host: str, policy: AddressPolicy, what: str) -> str:
    """Why ``host`` is refused without asking DNS (a metadata name, localhost, a forbidden literal
    address); '' when only its resolved addresses can tell."""
    if policy.allow_private_addresses:
        return ""
    name = host.lower().rstrip(".").strip("[]")
    if name in BLOCKED_NAMES:
        return f"{what}: host {host!r} is a cloud-metadata name; {hint(policy)}"
    allowed = _allowed_networks(policy.allowed_networks)
    if (name == "localhost" or name.endswith(".localhost")) and blocked_reason(LOOPBACK, allowed):
        return f"{what}: host {host!r} is this machine (loopback); {hint(policy)}"
    literal = _literal(name)
    if literal is not None and blocked_reason(literal, allowed):
        return f"{what}: {host} is {blocked_reason(literal, allowed)}; {hint(policy)}"
    return ""


def _literal(name: str) -> IPAddress | None:
    """The address when ``name`` is written as one (a zone index like %eth0 is ignored)."""
    try:
        return ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return None


def resolve(host: str, port: int, what: str) -> list[str]:
    """The host's addresses, in the resolver's order (a literal address resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise Unavailable(f"cannot resolve host {host!r} of {what} ({reason})") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def blocked_reason(address: IPAddress, allowed: tuple[IPNetwork, ...] = ()) -> str:
    """Why an address may not be reached ('' when it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return ""
    for attribute, reason in _CHECKS:
        if getattr(address, attribute):
            return reason
    return "" if address.is_global else "an address that is not publicly routable"


def _valid_networks(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    try:
        _allowed_networks(tuple(cidrs))
    except InvalidArgument as exc:
        raise ValueError(exc.message.removeprefix("TUNELAB_ALLOWED_NETWORKS: ")) from None
    return tuple(cidrs)


# The settings field TUNELAB_ALLOWED_NETWORKS: a bad CIDR stops the service at start, naming it.
AllowedNetworks = Annotated[tuple[str, ...], AfterValidator(_valid_networks)]


@lru_cache(maxsize=32)
def _allowed_networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise InvalidArgument(
                f"TUNELAB_ALLOWED_NETWORKS: {cidr!r} is not a network; write CIDRs like 10.1.0.0/16"
            ) from None
    return tuple(networks)
