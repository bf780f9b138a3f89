"""What to build: the environment spec, its validation, and the secrets it carries.

Index passwords are secrets: they are kept out of the stored spec, out of the cache key and out
of every log line and error (:class:`Redactor`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from tunelab.common.errors import InvalidArgument, PermissionDenied

WITHHELD = "****"
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
PYTHON_RE = re.compile(r"^3\.\d+(\.\d+)?$")
TORCH_RE = re.compile(r"^(auto|cpu|xpu|cu\d+|rocm[\d.]+)$")
UNSAFE_HELP = (
    "such lines are refused unless the spec sets allow_unsafe_requirements and the server allows it "
    "(TUNELAB_ALLOW_UNSAFE_REQUIREMENTS): publish the package to an index and name it, and set indexes "
    "with the spec's default_index / extra_indexes"
)


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Index:
    url: str
    username: str = ""
    password: str = field(default="", repr=False)

    def url_with_credentials(self) -> str:
        """The URL uv is given (through its environment, never its command line)."""
        if not self.username and not self.password:
            return self.url
        parts = urlsplit(self.url)
        auth = quote(self.username, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        return urlunsplit(parts._replace(netloc=f"{auth}@{parts.netloc}"))


@dataclass(frozen=True)
class Spec:
    python_version: str = ""
    requirements: str = ""
    exclude: tuple[str, ...] = ()
    extra_indexes: tuple[Index, ...] = ()
    default_index: Index | None = None
    include_system_site_packages: bool = False
    allow_unsafe_requirements: bool = False
    constraints: str = ""
    torch_backend: str = ""
    exclude_newer: str = ""  # RFC 3339, UTC
    platform: str = ""

    def indexes(self) -> list[Index]:
        return [*([self.default_index] if self.default_index else []), *self.extra_indexes]

    def secrets(self) -> list[str]:
        return [i.password for i in self.indexes() if i.password and i.password != WITHHELD]

    def withheld_secrets(self) -> bool:
        """True for a spec read back from storage that had passwords (they are never stored)."""
        return any(i.password == WITHHELD for i in self.indexes())

    def without_secrets(self, mark: str = "") -> Spec:
        def strip(i: Index) -> Index:
            return replace(i, password=mark if i.password else "")

        return replace(
            self,
            default_index=strip(self.default_index) if self.default_index else None,
            extra_indexes=tuple(strip(i) for i in self.extra_indexes),
        )

    def to_dict(self) -> dict[str, Any]:
        """What is stored: passwords replaced by a marker that says one was given."""
        return asdict(self.without_secrets(WITHHELD))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        default = data.get("default_index")
        return cls(
            **{
                **data,
                "exclude": tuple(data.get("exclude", ())),
                "extra_indexes": tuple(Index(**i) for i in data.get("extra_indexes", ())),
                "default_index": Index(**default) if default else None,
            }
        )

    def identity(self) -> str:
        """sha256 of the spec as written (credentials left out): equal specs, equal identity."""
        body = asdict(self.without_secrets())
        body["exclude"] = sorted({canonical_name(n) for n in self.exclude})
        body["requirements"] = _normalize_text(self.requirements)
        body["constraints"] = _normalize_text(self.constraints)
        body.pop("allow_unsafe_requirements")
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


def _normalize_text(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def validate(spec: Spec, server_allows_unsafe: bool) -> None:
    """Raises InvalidArgument (or PermissionDenied) naming the field and what to change."""
    if spec.python_version and not PYTHON_RE.match(spec.python_version):
        raise InvalidArgument(
            f"spec.python_version {spec.python_version!r}: write it as 3.X or 3.X.Y, e.g. 3.11"
        )
    if not spec.requirements.strip():
        raise InvalidArgument("spec.requirements is empty: give at least one requirement line")
    for name in spec.exclude:
        if not NAME_RE.match(name):
            raise InvalidArgument(f"spec.exclude: {name!r} is not a package name")
    for where, index in [("default_index", spec.default_index)] + [
        (f"extra_indexes[{i}]", x) for i, x in enumerate(spec.extra_indexes)
    ]:
        if index is not None:
            _check_index(where, index)
    if spec.torch_backend and not TORCH_RE.match(spec.torch_backend):
        raise InvalidArgument(f"spec.torch_backend {spec.torch_backend!r}: use e.g. cpu, cu128 or auto")
    unsafe = unsafe_lines(spec.requirements, "requirements") + unsafe_lines(spec.constraints, "constraints")
    if not unsafe:
        return
    if not spec.allow_unsafe_requirements:
        raise InvalidArgument(f"{'; '.join(unsafe)}: {UNSAFE_HELP}")
    if not server_allows_unsafe:
        raise PermissionDenied(
            f"{'; '.join(unsafe)}: the spec allows unsafe requirement lines but this server does not "
            "(TUNELAB_ALLOW_UNSAFE_REQUIREMENTS is off); ask its operator, or remove those lines"
        )


def _check_index(where: str, index: Index) -> None:
    refusal = f"spec.{where}.url {index.url!r}: give an http(s) URL of a simple index"
    try:
        parts = urlsplit(index.url)
    except ValueError:  # an unclosed [ of an IPv6 address
        raise InvalidArgument(refusal) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(refusal)
    if parts.username or parts.password:
        raise InvalidArgument(
            f"spec.{where}.url: do not put credentials in the URL; set spec.{where}.username and .password"
        )


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with backslash continuations joined and comments removed."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = re.sub(r"(^|\s)#.*$", "", pending + raw).strip()
        pending = ""
        if line:
            out.append((start, line))
    return out


def unsafe_lines(text: str, where: str) -> list[str]:
    """Descriptions of the lines that point at local paths, are editable or change the index."""
    found = []
    for number, line in logical_lines(text):
        why = _why_unsafe(line)
        if why:
            found.append(f"{where} line {number} ({line.split(' --hash')[0][:80]!r}) {why}")
    return found


def _why_unsafe(line: str) -> str:
    if line.startswith("-"):
        option = re.split(r"[\s=]", line, maxsplit=1)[0]
        if option in ("-e", "--editable"):
            return "is an editable install"
        if option in ("-i", "--index-url", "--extra-index-url", "--find-links", "-f", "--no-index"):
            return "changes the index"
        return "is an option (only requirements are accepted)"
    target = line.split(";")[0].split(" --hash")[0].strip()
    if "@" in target and "://" not in target.split("@", 1)[0]:
        target = target.split("@", 1)[1].strip()
    if target.startswith(("file:", ".", "/", "~")) or "\\" in target:
        return "points at a local path"
    if "://" in target and target.split("://", 1)[0].lower().endswith("+file"):  # git+file://…
        return "points at a local path"
    if "/" in target and "://" not in target:
        return "points at a local path"
    return ""
