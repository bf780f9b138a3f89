"""A local package index (PEP 503 pages over a folder of wheels) served inside the engine's
namespace, on the address containers reach it by: torch for the engine and trainer images
(``--build-arg TORCH_INDEX_URL``) and the few packages the walkthrough's environment build needs
(``TUNELAB_DEFAULT_INDEX_URL``)."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
from pathlib import Path

from engine import Engine, sh

WHEELS = ("torch==2.13.0", "six==1.17.0")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download(folder: Path) -> None:
    """torch (a local CPU wheel where pip's find-links has one) and its dependencies, from PyPI."""
    folder.mkdir(parents=True, exist_ok=True)
    sh(sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(folder), *WHEELS)


def write_pages(folder: Path) -> Path:
    site = folder / "site"
    simple = site / "simple"
    projects: dict[str, list[Path]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        projects.setdefault(canonical(wheel.name.split("-")[0]), []).append(wheel)
    for name, wheels in projects.items():
        page = simple / name
        page.mkdir(parents=True, exist_ok=True)
        for wheel in wheels:
            target = page / wheel.name
            if not target.exists():
                target.hardlink_to(wheel)
        links = "".join(f'<a href="{html.escape(w.name)}">{html.escape(w.name)}</a>\n' for w in wheels)
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    links = "".join(f'<a href="{n}/">{n}</a>\n' for n in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return site


def serve(eng: Engine, site: Path, address: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        eng.inside(
            sys.executable, "-m", "http.server", str(port), "--bind", address, "--directory", str(site)
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        probe = subprocess.run(
            eng.inside("curl", "-fsS", "-o", "/dev/null", f"http://{address}:{port}/simple/"), check=False
        )
        if probe.returncode == 0:
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the local package index did not start")
        time.sleep(0.5)
