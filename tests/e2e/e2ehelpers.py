"""Helpers of the end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path


def processes_under(root: Path) -> list[int]:
    """Processes running in a directory under ``root`` (services, agents, jobs, engines all do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (cwd == str(root) or cwd.startswith(f"{root}/")):
            found.append(int(entry.name))
    return found
