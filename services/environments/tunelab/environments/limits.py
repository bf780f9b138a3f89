"""Size limits of what CreateEnvironment accepts, and of one ListEnvironments page.

Every environment is returned whole by GetEnvironment and WatchEnvironment, and in a list view by
ListEnvironments, so an unbounded spec would push those answers past gRPC's 4 MB default message
size for every client that keeps the default. The limits sit far above real specs: our own
hashed trainer lock (docker/requirements/trainer.txt, 81 packages with every wheel's hash) is
2,267 lines and 176 KB, so a requirements text may be about 3x that size and 4x its lines.
"""

from __future__ import annotations

from tunelab.common.errors import InvalidArgument
from tunelab.environments.spec import Spec

KiB = 1024
# requirements and constraints, each: bytes (UTF-8) and lines.
MAX_TEXT_BYTES = 512 * KiB
MAX_TEXT_LINES = 10_000
# The list fields of a spec: a handful of names or indexes in practice.
MAX_EXCLUDE = 64
MAX_NAME_CHARS = 128
MAX_INDEXES = 8
MAX_URL_CHARS = 2048
MAX_SHORT_CHARS = 128  # python_version, torch_backend, platform, index username
MAX_DESCRIPTION_CHARS = 2048
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256
# One ListEnvironments page stops adding environments once it holds this many bytes (it holds
# at least one), well under gRPC's 4 MB default; its next_page_token continues after the last.
MAX_LIST_PAGE_BYTES = 1024 * KiB
# Free text cut to this many characters in the list view (GetEnvironment returns it whole).
LIST_TEXT_CHARS = 1024


def _too_long(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value):,} characters; the limit is {limit:,}")


def _check_text(field: str, text: str) -> None:
    size = len(text.encode())
    if size > MAX_TEXT_BYTES:
        raise InvalidArgument(
            f"{field} is {size:,} bytes; the limit is {MAX_TEXT_BYTES:,} ({MAX_TEXT_BYTES // KiB} KiB): "
            "list only the packages you need, not a copy of a whole environment"
        )
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if lines > MAX_TEXT_LINES:
        raise InvalidArgument(
            f"{field} has {lines:,} lines; the limit is {MAX_TEXT_LINES:,}: "
            "list only the packages you need, not a copy of a whole environment"
        )


def check_spec(spec: Spec) -> None:
    """Raises InvalidArgument naming the first field over its limit and the limit."""
    _check_text("spec.requirements", spec.requirements)
    _check_text("spec.constraints", spec.constraints)
    for field in ("python_version", "torch_backend", "platform"):
        _too_long(f"spec.{field}", getattr(spec, field), MAX_SHORT_CHARS)
    if len(spec.exclude) > MAX_EXCLUDE:
        raise InvalidArgument(f"spec.exclude has {len(spec.exclude)} names; the limit is {MAX_EXCLUDE}")
    for i, name in enumerate(spec.exclude):
        _too_long(f"spec.exclude[{i}]", name, MAX_NAME_CHARS)
    if len(spec.extra_indexes) > MAX_INDEXES:
        raise InvalidArgument(
            f"spec.extra_indexes has {len(spec.extra_indexes)} indexes; the limit is {MAX_INDEXES}"
        )
    named = [("default_index", spec.default_index)] + [
        (f"extra_indexes[{i}]", x) for i, x in enumerate(spec.extra_indexes)
    ]
    for where, index in named:
        if index is not None:
            _too_long(f"spec.{where}.url", index.url, MAX_URL_CHARS)
            _too_long(f"spec.{where}.username", index.username, MAX_SHORT_CHARS)
            _too_long(f"spec.{where}.password", index.password, MAX_URL_CHARS)


def check_metadata(description: str, labels: dict[str, str]) -> None:
    """Raises InvalidArgument for a description or labels over their limits."""
    _too_long("description", description, MAX_DESCRIPTION_CHARS)
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"labels has {len(labels)} entries; the limit is {MAX_LABELS}")
    for key, value in labels.items():
        _too_long(f"labels key {key[:40]!r}", key, MAX_LABEL_KEY_CHARS)
        _too_long(f"labels[{key!r}]", value, MAX_LABEL_VALUE_CHARS)


def clip(text: str, limit: int = LIST_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked with "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
