"""Why a build failed, in words: a one-line diagnosis that says what to do, followed by uv's own
explanation (the resolver's derivation, the installer's or build backend's output)."""

from __future__ import annotations

import re

from tunelab.environments.spec import Spec

MAX_DETAIL = 6000


class BuildFailed(Exception):
    """A build step failed; ``message`` is what the environment's ``error`` says."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def explain(phase: str, lines: list[str], spec: Spec) -> str:
    detail = _uv_error(lines)
    text = "\n".join(lines)
    return f"{_diagnosis(phase, text, spec)}\n{detail}"[:MAX_DETAIL]


def _uv_error(lines: list[str]) -> str:
    """From uv's first ``error:`` line on (its causes and hints); else the last lines."""
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            return "\n".join(lines[i:]).strip()
    return "\n".join(lines[-30:]).strip()


def _index_named(text: str, spec: Spec) -> str:
    match = re.search(r"\((https?://[^)\s]+)\)", text) or re.search(r"(https?://\S+)", text)
    if match:
        return match.group(1).rstrip(".,`'")
    indexes = [i.url for i in spec.indexes()]
    return indexes[0] if indexes else "the index"


def _diagnosis(phase: str, text: str, spec: Spec) -> str:
    if "401 Unauthorized" in text or "403 Forbidden" in text:
        status = "401 Unauthorized" if "401" in text else "403 Forbidden"
        return (
            f"{phase} failed: the index {_index_named(text, spec)} refused access ({status}); "
            "check that index's username and password (or token) in the spec"
        )
    if re.search(r"Connection refused|dns error|tcp connect error|timed out|error sending request", text):
        return (
            f"{phase} failed: cannot reach the index {_index_named(text, spec)}; check its URL and "
            "that this server can reach it (proxy, firewall, DNS)"
        )
    missing = re.findall(r"Because (\S+) was not found in the package registry", text)
    if missing:
        return (
            f"{phase} failed: no package named {missing[0]} on the index; check the spelling in "
            "spec.requirements, or add the index that has it (spec.extra_indexes)"
        )
    if "No solution found" in text:
        return (
            f"{phase} failed: the requirements conflict (the resolver's explanation follows); relax "
            "or change the pins it names, or exclude a package (spec.exclude)"
        )
    built = re.search(r"Failed to build `([^`]+)`", text)
    if built:
        return (
            f"{phase} failed: building {built.group(1)} from source failed (its build output follows); "
            "pin a version that ships a wheel for this platform, or exclude it (spec.exclude)"
        )
    if "hash" in text.lower() and "mismatch" in text.lower():
        return (
            f"{phase} failed: a downloaded file does not match the hash in the lock (a proxy or mirror "
            "serving different files?)"
        )
    return f"{phase} failed (uv's output follows)"
