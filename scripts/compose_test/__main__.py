"""`make compose-test`: the compose stack built and run for real, on a Docker engine of its own.

    python scripts/compose_test [--keep-going] [--no-pods] [--cache DIR]

Starts Debian's dockerd in a network namespace of its own, builds stand-ins for the public base
and third-party images (no registry is reachable here; each says what it stands in for), builds
the project's images with `make images`, runs the `cpu` profile through the walkthrough
(scripts/compose_test/stack.py) and each Kubernetes workload of the prod overlay as its pod would
run (pods.py). Everything it started is removed at the end, on failure too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine as engines
import standins
import wheelindex
from stack import COMPOSE, ROOT, Stack, StepFailed, build_inputs, step

INDEX_PORT = 3141
IMAGES = ("datasets", "environments", "gateway", "trainer-cpu", "engine")


def resolved_compose(env_file: Path) -> dict:
    argv = [str(COMPOSE), "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml")]
    argv += ["--env-file", str(env_file), "--profile", "cpu", "config", "--format", "json"]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout)


def build_images(eng: engines.Engine, index_url: str) -> None:
    step(f"make images ({', '.join(IMAGES)}): the project's Dockerfiles, unchanged")
    env = {
        **eng.env,
        "DOCKER": engines.DOCKER,
        "CPU_TORCH_INDEX_URL": index_url,
        # The stand-ins carry the tags; the lock's digests are those of the real images.
        "BASE_DIGESTS": "off",
        "BUILD_ARGS": " ".join(eng.build_args()),
    }
    subprocess.run(
        ["make", "--no-print-directory", "images", f"IMAGES={' '.join(IMAGES)}"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def run_stack(stack: Stack, work: Path) -> list[str]:
    """The compose walkthrough; its failure, if any (the pods still run after it)."""
    inputs = build_inputs(work)
    try:
        stack.up()
        stack.walkthrough(inputs)
        stack.prometheus()
        stack.restart()
    except StepFailed as exc:
        return [str(exc)]
    finally:
        stack.down()
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make compose-test", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cache", type=Path, default=ROOT / ".compose-test", help="downloads kept between runs (git-ignored)"
    )
    p.add_argument("--no-pods", action="store_true", help="skip the simulated Kubernetes pods")
    p.add_argument("--no-stack", action="store_true", help="skip the compose stack (only the pods)")
    p.add_argument(
        "--engine-root",
        type=Path,
        help="keep dockerd's data (images, build cache) in this folder between runs, for development "
        "(e.g. .compose-test/engine); default: a temporary folder, removed at the end",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root: it creates a network namespace and runs dockerd")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tlcompose-"))
    work.chmod(0o755)  # the containers' uid reads the models folder under it
    index: subprocess.Popen[bytes] | None = None
    failures: list[str] = []
    try:
        with engines.engine(args.engine_root.resolve() if args.engine_root else work / "engine") as eng:
            wheelindex.download(args.cache / "wheels")
            site = wheelindex.write_pages(args.cache / "wheels")
            index = wheelindex.serve(eng, site, engines.BRIDGE.split("/")[0], INDEX_PORT)
            index_url = f"http://{engines.BRIDGE.split('/')[0]}:{INDEX_PORT}/simple"
            stack = Stack(eng, work, INDEX_PORT)
            standins.build_all(eng, args.cache, resolved_compose(stack.env_file))
            build_images(eng, index_url)
            if not args.no_stack:
                failures += run_stack(stack, work)
            if not args.no_pods:
                import pods

                pods.run_all(eng, work)
    except (StepFailed, RuntimeError, subprocess.CalledProcessError) as exc:
        failures.append(str(exc))
    finally:
        if index is not None:
            index.terminate()
            index.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    for failure in failures:
        print(f"\ncompose-test FAILED: {failure}", flush=True)
    print(f"\ncompose-test {'FAILED' if failures else 'passed'} in {minutes:.1f} min", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
