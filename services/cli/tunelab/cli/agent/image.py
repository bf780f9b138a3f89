"""The job's image under its environment: what ``include_system_site_packages`` shows a job.

An environment is a virtual environment whose ``bin/python`` links to a base interpreter on the
machine where the job runs. Built with system site packages, it sees that interpreter's packages:
in a container, the image's torch, transformers and peft, so the environment only has to add
what the image lacks. The agent runs on the image's Python too.

When the agent's Python is itself a virtual environment over that same base interpreter (the
embedded stack runs on the ``.venv`` that ``make setup`` builds), that virtual environment is the
job's image. Python does not chain virtual environments, so the environment would see the bare
base interpreter instead. :func:`layer_image` closes the gap: it adds ``_tunelab_image.pth`` to
the materialized environment, which appends the agent's site-packages after the environment's
own (the environment's packages win; the image fills in what it lacks, as in a container).
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

PTH_NAME = "_tunelab_image.pth"


def _venv_config(root: Path) -> dict[str, str]:
    try:
        text = (root / "pyvenv.cfg").read_text()
    except OSError:
        return {}
    pairs = (line.partition("=") for line in text.splitlines() if "=" in line)
    return {key.strip().lower(): value.strip() for key, _, value in pairs}


def image_site_dirs() -> list[str]:
    """The agent's own site-packages when it runs in a virtual environment, else none."""
    if sys.prefix == sys.base_prefix:
        return []  # the agent runs on the base interpreter: its packages are the system's already
    return [p for p in site.getsitepackages([sys.prefix]) if os.path.isdir(p)]


def layer_image(root: Path) -> str:
    """Makes the agent's image visible under the environment at ``root`` where it asks for system
    site packages; returns a line for the job's log saying what happened ("" when nothing to say)."""
    cfg = _venv_config(root)
    if cfg.get("include-system-site-packages", "false").lower() != "true":
        return ""
    dirs = image_site_dirs()
    if not dirs:
        return ""
    env_python, agent_python = root / "bin" / "python", Path(sys.executable)
    if os.path.realpath(env_python) != os.path.realpath(agent_python):
        return (
            f"the environment runs on {os.path.realpath(env_python)}, not on the agent's base "
            f"interpreter {os.path.realpath(agent_python)}: it sees that interpreter's packages only"
        )
    site_packages = sorted(root.glob("lib/python3*/site-packages"))
    if not site_packages:
        return f"no site-packages in {root}: the image's packages are not layered under it"
    text = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    pth = site_packages[0] / PTH_NAME
    if not pth.is_file() or pth.read_text() != text:
        tmp = pth.with_name(f".{PTH_NAME}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(pth)  # atomic: a job starting beside us sees the old file or the new one
    return f"system site packages: the image's ({', '.join(dirs)}) under the environment's own"
