"""Resource names: ``datasets/{id}``, ``datasets/{id}/versions/{n}`` and friends.

Every name a request or a command line carries is parsed here, once. Ids are stored lower-case and
read without regard to case: ``AdvertiseGen``, ``datasets/ADVERTISEGEN`` and ``advertisegen`` are
the same dataset, in every collection (datasets, environments, jobs, queues, deployments, keys).
Only ASCII letters fold; whatever is still invalid after folding is refused with what to write
instead, when replacing '_', '.' or spaces by '-' would make it valid.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Iterable

from tunelab.common.errors import InvalidArgument

ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_SEPARATORS = re.compile(r"[\s_.-]+")


def fold(value: str) -> str:
    """``AdvertiseGen`` → ``advertisegen`` (ASCII letters only: nothing else becomes valid by it)."""
    return value.translate(_FOLD)


def check_id(value: str, what: str) -> str:
    """An id as written → the stored id (lower-case); InvalidArgument naming ``what`` if invalid."""
    ident = fold(value)
    if ID_RE.match(ident):
        return ident
    rule = (
        "1-63 lower-case letters, digits and '-', starting and ending with a letter or digit "
        "(upper-case letters read as lower-case)"
    )
    suggestion = _SEPARATORS.sub("-", ident).strip("-")
    if ID_RE.match(suggestion):
        raise InvalidArgument(
            f"{what} {value!r} is not a valid name: use {suggestion!r}, as names are {rule}"
        )
    raise InvalidArgument(f"{what} {value!r} is not a valid name: use {rule}")


def split_name(name: str, collection: str, what: str) -> tuple[str, str]:
    """``datasets/AdvertiseGen`` → (``advertisegen``, ``AdvertiseGen``): the id and its spelling."""
    prefix = f"{collection}/"
    ident = name[len(prefix) :] if fold(name).startswith(fold(prefix)) else name
    if "/" in ident:
        raise InvalidArgument(f"{what}: {name!r} is not a {collection}/{{id}} name")
    return check_id(ident, what), ident


def parse_name(name: str, collection: str, what: str) -> str:
    """``datasets/foo`` → ``foo``; a bare ``foo`` is accepted too, and ``Foo`` is ``foo``."""
    return split_name(name, collection, what)[0]


def parse_version(name: str, collection: str, what: str) -> tuple[str, int | None]:
    """``datasets/x/versions/3`` (or ``latest``), ``x@3``, ``x@latest`` or ``x`` → (id, number|None).

    ``None`` means the newest usable version; ``collection`` is the plural, e.g. ``datasets``.
    """
    parts = name.split("/")
    if len(parts) > 1 and fold(parts[0]) == collection:
        if len(parts) == 2:
            ident, ver = parts[1], ""
        elif len(parts) == 4 and parts[2] == "versions":
            ident, ver = parts[1], parts[3]
        else:
            raise InvalidArgument(f"{what}: {name!r} is not a {collection}/{{id}}/versions/{{n}} name")
    else:
        ident, _, ver = name.partition("@")
    ident = check_id(ident, what)
    if ver in ("", "latest"):
        return ident, None
    if not ver.isdigit() or int(ver) < 1:
        raise InvalidArgument(f"{what}: {name!r}: version must be a positive number or 'latest'")
    return ident, int(ver)


def resource_name(collection: str, ident: str, number: int | None = None) -> str:
    """(``datasets``, ``x``, 3) → ``datasets/x/versions/3``; without a number ``datasets/x``."""
    return f"{collection}/{ident}" + (f"/versions/{number}" if number else "")


def did_you_mean(value: str, known: Iterable[str]) -> str:
    """``"; did you mean 'advertisegen'?"`` when a known name is close to ``value``, else ``""``."""
    close = difflib.get_close_matches(fold(value), list(known), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
