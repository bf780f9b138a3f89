"""The resolved lock (``uv pip compile --generate-hashes`` output) and the keys derived from it.

``env_key`` is the sha256 of the lock's requirement lines (name, version or URL, hashes; comments
dropped) + the exact Python version + platform + the flags that change what is on disk. It never
sees credentials: uv writes no index URLs into the lock (no ``--emit-index-url``).
A layer key names one installed distribution on one Python and platform, so two environments
that share a distribution share its packed layer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from tunelab.environments.spec import canonical_name, logical_lines

# Bump when the on-disk layout of builds or layers changes: every key changes with it.
LAYOUT_VERSION = "layers-1"

_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(?P<rest>.*)$")


@dataclass(frozen=True)
class LockEntry:
    name: str  # canonical
    version: str  # "1.17.0", or the URL for a direct reference
    hashes: tuple[str, ...]

    @property
    def label(self) -> str:
        return (
            f"{self.name}=={self.version}" if "://" not in self.version else f"{self.name} @ {self.version}"
        )

    def canonical(self) -> str:
        return f"{self.label} {' '.join(sorted(self.hashes))}"


def parse_lock(text: str) -> list[LockEntry]:
    entries = []
    for _, line in logical_lines(text):
        hashes = tuple(h.split(":", 1)[-1] for h in re.findall(r"--hash[=\s]+(\S+)", line))
        head = re.sub(r"--hash[=\s]+\S+", "", line).split(";")[0].strip()
        match = _ENTRY.match(head)
        if not match:
            continue
        rest = match.group("rest").strip()
        if rest.startswith("=="):
            version = rest[2:].strip()
        elif rest.startswith("@"):
            version = rest[1:].strip()
        else:
            version = rest
        entries.append(LockEntry(canonical_name(match.group("name")), version, hashes))
    return entries


@dataclass(frozen=True)
class Target:
    """What a build is for, besides the lock."""

    python_version: str  # exact, e.g. 3.11.7
    platform: str  # e.g. x86_64-manylinux_2_36
    system_site_packages: bool
    torch_backend: str = ""


def env_key(entries: list[LockEntry], target: Target) -> str:
    body = {
        "layout": LAYOUT_VERSION,
        "lock": sorted(e.canonical() for e in entries),
        "python": target.python_version,
        "platform": target.platform,
        "system_site_packages": target.system_site_packages,
        "torch_backend": target.torch_backend,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def layer_key(entry: LockEntry, target: Target) -> str:
    """One distribution's installed files depend on it, the Python and the platform only."""
    body = f"{LAYOUT_VERSION}|{entry.canonical()}|{target.python_version}|{target.platform}"
    return hashlib.sha256(body.encode()).hexdigest()


def lock_subset(text: str, names: set[str]) -> str:
    """The lock's requirement lines (with their hashes) for the packages in ``names`` only."""
    keep = []
    for _, line in logical_lines(text):
        entry = parse_lock(line)
        if entry and entry[0].name in names:
            keep.append(line)
    return "\n".join(keep) + "\n"
