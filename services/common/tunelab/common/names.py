"""Resource names: ``datasets/{id}``, ``datasets/{id}/versions/{n}`` and friends."""

from __future__ import annotations

import re

from tunelab.common.errors import InvalidArgument

ID_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_id(value: str, what: str) -> str:
    if not ID_RE.match(value):
        raise InvalidArgument(
            f"{what} {value!r} is not a valid name: use 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def parse_name(name: str, collection: str, what: str) -> str:
    """``datasets/foo`` → ``foo``; a bare ``foo`` is accepted too."""
    prefix = f"{collection}/"
    ident = name[len(prefix) :] if name.startswith(prefix) else name
    if "/" in ident:
        raise InvalidArgument(f"{what}: {name!r} is not a {collection}/{{id}} name")
    return check_id(ident, what)
