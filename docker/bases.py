"""The base images of docker/*.Dockerfile, pinned by digest in ``docker/bases.lock``.

    python docker/bases.py --build-args   ARG TAG@DIGEST per line, what docker/build.sh passes
    python docker/bases.py --check        offline: each Dockerfile's ``ARG X=TAG`` default is the
                                          lock's tag, and every lock entry is used
    python docker/bases.py --refresh      resolve each tag's current digest from its registry
                                          (Docker Hub, ghcr.io) and rewrite the lock

The Dockerfiles name plain tags (``ARG PYTHON_IMAGE=python:3.11-slim-bookworm``), so a bare
``docker build`` works anywhere, and the harness of ``make compose-test`` can build them unchanged
on stand-ins it builds under those tags; ``make images`` builds on the pinned digests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "docker" / "bases.lock"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
ARG_DEFAULT = re.compile(r"^ARG\s+([A-Z_]+_IMAGE)=(\S+)\s*$", re.MULTILINE)
MANIFESTS = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclass(frozen=True)
class Base:
    arg: str
    tag: str
    digest: str | None  # None: not recorded yet

    @property
    def ref(self) -> str:
        return f"{self.tag}@{self.digest}" if self.digest else self.tag


def read_lock(path: Path = LOCK) -> list[Base]:
    bases = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3 or (fields[2] != "-" and not DIGEST.match(fields[2])):
            raise SystemExit(
                f"{path.name}:{number}: expected `ARG TAG DIGEST` (DIGEST sha256:… or -): {line!r}"
            )
        bases.append(Base(fields[0], fields[1], None if fields[2] == "-" else fields[2]))
    return bases


def write_lock(bases: list[Base], path: Path = LOCK) -> None:
    text = path.read_text()
    for base in bases:
        pattern = re.compile(rf"^({re.escape(base.arg)}\s+{re.escape(base.tag)}\s+)\S+", re.MULTILINE)
        text = pattern.sub(rf"\g<1>{base.digest or '-'}", text)
    path.write_text(text)


def check(bases: list[Base]) -> list[str]:
    tags = {b.arg: b.tag for b in bases}
    used: set[str] = set()
    problems = []
    for dockerfile in sorted((ROOT / "docker").glob("*.Dockerfile")):
        for arg, default in ARG_DEFAULT.findall(dockerfile.read_text()):
            used.add(arg)
            if tags.get(arg) != default:
                problems.append(
                    f"docker/{dockerfile.name}: ARG {arg}={default}, but docker/bases.lock has "
                    f"{tags.get(arg, 'no such entry')}: keep them the same tag"
                )
    problems += [f"docker/bases.lock: {arg} is used by no Dockerfile" for arg in sorted(set(tags) - used)]
    return problems


def registry_digest(tag: str) -> str:
    """The digest the registry serves for ``tag`` now (the multi-platform index where there is one)."""
    name, _, version = tag.rpartition(":")
    host, _, repo = name.partition("/") if "." in name.split("/")[0] else ("docker.io", "", name)
    if host == "docker.io":
        repo = repo if "/" in repo else f"library/{repo}"
        token_url = f"https://auth.docker.io/token?service=registry.docker.io&scope=repository:{repo}:pull"
        api = "https://registry-1.docker.io"
    else:
        token_url, api = f"https://{host}/token?scope=repository:{repo}:pull", f"https://{host}"
    with urllib.request.urlopen(token_url, timeout=30) as r:
        token = json.load(r)["token"]
    request = urllib.request.Request(
        f"{api}/v2/{repo}/manifests/{version}",
        method="HEAD",
        headers={"Authorization": f"Bearer {token}", "Accept": MANIFESTS},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        digest = r.headers["Docker-Content-Digest"]
    if not digest or not DIGEST.match(digest):
        raise SystemExit(f"{tag}: the registry answered no digest")
    return str(digest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docker/bases.py", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--build-args", action="store_true", help="print ARG TAG@DIGEST lines")
    mode.add_argument("--check", action="store_true", help="the Dockerfiles' defaults match the lock")
    mode.add_argument("--refresh", action="store_true", help="resolve the digests from the registries")
    args = p.parse_args(argv)
    bases = read_lock()
    if args.build_args:
        for base in bases:
            if not base.digest:
                print(
                    f"warning: {base.tag} has no digest in docker/bases.lock: built from the tag",
                    file=sys.stderr,
                )
            print(base.arg, base.ref)
        return 0
    if args.refresh:
        bases = [Base(b.arg, b.tag, registry_digest(b.tag)) for b in bases]
        write_lock(bases)
        for base in bases:
            print(base.arg, base.ref)
    problems = check(bases)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems and args.check:
        unpinned = [b.tag for b in bases if not b.digest]
        print("base images in sync" + (f" (no digest yet: {', '.join(unpinned)})" if unpinned else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
