"""The job agent layers its own virtual environment (the job's image in the embedded stack) under
an environment built with system site packages: the environment's packages first, the image's next."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli.agent.image import PTH_NAME, image_site_dirs, layer_image

UV = str(Path(sys.executable).parent / "uv")
pytestmark = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the tests must run in a venv")


def venv(path: Path, system_site_packages: bool) -> Path:
    args = [UV, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(path)]
    if system_site_packages:
        args.insert(2, "--system-site-packages")
    subprocess.run(args, check=True, capture_output=True)
    return path


def run(env: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(env / "bin" / "python"), "-c", code], capture_output=True, text=True)


def test_the_image_shows_under_an_environment_with_system_site_packages(tmp_path: Path) -> None:
    env = venv(tmp_path / "env", system_site_packages=True)
    site = next(env.glob("lib/python3*/site-packages"))
    (site / "yaml.py").write_text("WHERE = 'the environment'\n")  # shadows the image's PyYAML

    assert run(env, "import typer").returncode != 0  # a venv over a venv: the image is not there
    line = layer_image(env)
    assert "system site packages: the image's" in line and image_site_dirs()[0] in line
    assert (site / PTH_NAME).is_file()
    assert layer_image(env) == line  # again: the same file, left as it is

    code = (
        "import json, sys, typer, yaml; print(typer.__file__); print(yaml.WHERE); print(json.dumps(sys.path))"
    )
    ran = run(env, code)
    assert ran.returncode == 0, ran.stderr
    typer_file, where, path = ran.stdout.splitlines()
    assert typer_file.startswith(image_site_dirs()[0])  # the image's (the CLI's own venv)
    assert where == "the environment"  # the environment's own package wins
    order = json.loads(path)
    assert order.index(str(site)) < order.index(image_site_dirs()[0])


def test_an_isolated_environment_stays_isolated(tmp_path: Path) -> None:
    env = venv(tmp_path / "env", system_site_packages=False)
    assert layer_image(env) == ""
    assert not list(env.glob(f"lib/python3*/site-packages/{PTH_NAME}"))
    assert run(env, "import typer").returncode != 0


def test_an_environment_on_another_interpreter_is_left_alone(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /elsewhere/bin\ninclude-system-site-packages = true\n")
    (env / "bin" / "python").symlink_to("/bin/sh")  # not the agent's base interpreter
    assert "not on the agent's base interpreter" in layer_image(env)
    assert not list(env.glob(f"lib/python3*/site-packages/{PTH_NAME}"))
