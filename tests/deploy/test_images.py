"""What the Dockerfiles promise the runtime, read from the files: directories a service writes are
its user's at every level, and base images come from build args that docker/bases.lock pins."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
INSTALL = re.compile(r"install -d -o (\S+) -g \S+ ((?:/\S+ ?)+)")
HOME = re.compile(r"useradd .*--home-dir (\S+) --create-home")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_level_of_a_created_data_directory_belongs_to_the_service_user(dockerfile: Path) -> None:
    """`install -d -o USER a/b/c` gives USER only c: b stays root's, and a service that writes
    beside c (the gateway's SQLite state in /var/lib/tunelab/gateway) cannot start."""
    text = dockerfile.read_text().replace("\\\n", " ")
    owned = {Path(h) for h in HOME.findall(text)}
    for _user, paths in INSTALL.findall(text):
        owned |= {Path(p) for p in paths.split()}
    for path in owned:
        home = next((h for h in owned if h != path and h in path.parents), None)
        if home is None:
            continue
        for parent in path.parents:
            if parent == home or home not in parent.parents:
                break
            assert parent in owned, f"{dockerfile.name}: {parent} (above {path}) stays root's"


def test_the_gateway_owns_its_state_directory() -> None:
    text = (ROOT / "docker/gateway.Dockerfile").read_text()
    (_, paths), *_ = INSTALL.findall(text.replace("\\\n", " "))
    assert "/var/lib/tunelab/gateway" in paths.split()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_build_args_with_the_locked_tags(dockerfile: Path) -> None:
    froms = re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.MULTILINE)
    assert froms and all(f.startswith("${") for f in froms), froms


def test_bases_lock_matches_the_dockerfiles() -> None:
    out = subprocess.run(
        [sys.executable, "docker/bases.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_bases_lock_refuses_a_malformed_digest(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        import bases
    finally:
        sys.path.remove(str(ROOT / "docker"))
    lock = tmp_path / "bases.lock"
    lock.write_text("PYTHON_IMAGE python:3.11-slim-bookworm sha256:abc\n")
    with pytest.raises(SystemExit, match=r"bases.lock:1: expected"):
        bases.read_lock(lock)
    digest = "sha256:" + "0" * 64
    lock.write_text(
        f"PYTHON_IMAGE python:3.11-slim-bookworm {digest}\nUV_IMAGE ghcr.io/astral-sh/uv:0.13.9 -\n"
    )
    pinned, unpinned = bases.read_lock(lock)
    assert (
        pinned.ref == f"python:3.11-slim-bookworm@{digest}" and unpinned.ref == "ghcr.io/astral-sh/uv:0.13.9"
    )
