"""Stand-ins for the public images compose.yaml and the Dockerfiles name, built under their exact
tags, since no container registry is reachable where the compose test runs:

- ``python:3.11-slim-bookworm``: Debian bookworm with its Python 3.11 (mmdebstrap), linked at
  /usr/local/bin/python3.11 as in the official image
- ``ghcr.io/astral-sh/uv:0.13.9``: /uv and /uvx from PyPI's ``uv`` wheel of that version
- ``minio/minio`` and ``minio/mc``: moto's S3 server and an ``mc`` for the bucket setup
- ``prom/prometheus``: Debian's prometheus package; ``grafana/grafana``: a health stub

The project's own images are then built from its Dockerfiles unchanged (``make images``).
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

from engine import Engine, sh

HERE = Path(__file__).resolve().parent / "standins"
PYTHON_TAG = "python:3.11-slim-bookworm"
UV_TAG, UV_VERSION = "ghcr.io/astral-sh/uv:0.13.9", "0.13.9"
SUITES = ("bookworm", "bookworm-updates")
MIRROR = "http://deb.debian.org/debian"
# Like the official image's: no docs or manuals, C.UTF-8, Python on PATH first.
PYTHON_ENV = [
    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
    'CMD ["python3"]',
]


def images_from_compose(compose_json: dict) -> dict[str, str]:
    """service name → image of the third-party services in a resolved compose file."""
    return {
        name: svc["image"]
        for name, svc in compose_json["services"].items()
        if name in ("minio", "minio-init", "prometheus", "grafana")
    }


def python_base(eng: Engine, cache: Path) -> None:
    tarball = cache / "python-bookworm.tar"
    partial = cache / "python-bookworm.partial.tar"  # mmdebstrap picks the format by the suffix
    if not tarball.exists():
        sources = [f"deb {MIRROR} {s} main" for s in SUITES]
        sources.append("deb http://deb.debian.org/debian-security bookworm-security main")
        hook = (
            'ln -s /usr/bin/python3.11 "$1/usr/local/bin/python3.11"; '
            'ln -s python3.11 "$1/usr/local/bin/python3"; ln -s python3.11 "$1/usr/local/bin/python"; '
            'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*; '
            # This machine's CA bundle: where egress passes a TLS-inspecting proxy, its CA is there.
            'cat /etc/ssl/certs/ca-certificates.crt > "$1/etc/ssl/certs/ca-certificates.crt"'
        )
        sh(
            "mmdebstrap", "--quiet", "--variant=minbase", "--include=python3.11,ca-certificates",
            "--aptopt=Acquire::Languages \"none\"", "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*", f"--customize-hook={hook}",
            "bookworm", str(partial), *sources,
        )  # fmt: skip
        partial.rename(tarball)
    docker_import(eng, tarball, PYTHON_TAG, PYTHON_ENV)


def uv_image(eng: Engine, cache: Path) -> None:
    wheels = cache / "uv"
    if not list(wheels.glob(f"uv-{UV_VERSION}-*.whl")):
        sh(
            sys.executable, "-m", "pip", "download", "--quiet", f"uv=={UV_VERSION}", "--no-deps",
            "--only-binary=:all:", "--platform=manylinux_2_17_x86_64", "--python-version=3.11",
            "-d", str(wheels),
        )  # fmt: skip
    wheel = next(wheels.glob(f"uv-{UV_VERSION}-*.whl"))
    tarball = cache / "uv.tar"
    with zipfile.ZipFile(wheel) as zf, tarfile.open(tarball, "w") as tf:
        for name in ("uv", "uvx"):
            data = zf.read(f"uv-{UV_VERSION}.data/scripts/{name}")
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tf.addfile(info, io.BytesIO(data))
    docker_import(eng, tarball, UV_TAG, ['ENTRYPOINT ["/uv"]'])


def docker_import(eng: Engine, tarball: Path, tag: str, changes: list[str]) -> None:
    if eng.docker("image", "inspect", tag, check=False, capture=True).returncode == 0:
        print(f"  stand-in {tag} (from an earlier run, --engine-root)", flush=True)
        return  # a new import would be a new image, and every build on it would start over
    argv = ["import"]
    for change in changes:
        argv += ["--change", change]
    result = eng.docker(*argv, str(tarball), tag, check=False, capture=True)
    if result.returncode != 0:
        raise RuntimeError(f"docker import {tag} failed: {result.stderr}")
    print(f"  stand-in {tag}", flush=True)


def third_party(eng: Engine, tags: dict[str, str]) -> None:
    """The S3 server (tagged as both MinIO images), Prometheus and the Grafana stub."""
    builds = {
        "s3.Dockerfile": [tags["minio"], tags["minio-init"]],
        "prometheus.Dockerfile": [tags["prometheus"]],
        "grafana.Dockerfile": [tags["grafana"]],
    }
    for dockerfile, names in builds.items():
        argv = ["build", "--quiet", "-f", str(HERE / dockerfile), *eng.build_args()]
        for name in names:
            argv += ["-t", name]
        result = eng.docker(*argv, str(HERE), check=False, capture=True)
        if result.returncode != 0:
            raise RuntimeError(f"building the stand-in {dockerfile} failed:\n{result.stdout}{result.stderr}")
        print(f"  stand-in {', '.join(names)} ({dockerfile})", flush=True)


def build_all(eng: Engine, cache: Path, compose_json: dict) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    print("==> stand-ins for public images (no container registry is reachable here)", flush=True)
    python_base(eng, cache)
    uv_image(eng, cache)
    third_party(eng, images_from_compose(compose_json))
