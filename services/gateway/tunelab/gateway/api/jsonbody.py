"""JSON request bodies, parsed in one place for every route that reads one.

``loads`` is ``json.loads`` plus the two refusals the gateway needs to pass a body on: nesting
deeper than ``MAX_DEPTH`` (deep enough for any request a model serves; much deeper and Python's
parser, or the serializer that sends the body upstream, runs out of recursion) and lone UTF-16
surrogates (``"\\ud800"``), which JSON's escapes allow but UTF-8 cannot carry upstream.

Both checks cost nothing on the usual body: the depth walk runs only when the body has more
brackets than ``MAX_DEPTH``, the surrogate check only when the bytes hold a surrogate escape
(or its raw UTF-8 form, which ``json.loads`` reads with ``surrogatepass``).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 128
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def loads(raw: bytes) -> Any:
    """The parsed body; ``ValueError`` saying what is wrong when it is not JSON the gateway takes."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(value):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if _SURROGATE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate (such as \\ud800)") from None
    return value


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False
