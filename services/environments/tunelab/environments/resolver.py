"""Resolving a spec to a lock, asking the index only for what is not fresh in uv's cache.

The index here (PyPI behind a proxy) sends no cache headers, so uv revalidates every page of every
package on every resolution: ~2 s for the ChatGLM3 set even when nothing changed. The service
keeps its own freshness window instead (TUNELAB_RESOLVE_CACHE_TTL_S, PyPI's own max-age is 600 s):
it resolves offline from uv's cache first; when uv names packages it would have to download (a
version changed in the spec), it fetches just those online, and tries offline again. A result
is used only when every package in it was fetched from these indexes within the window; anything
else falls back to a plain online resolution.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tunelab.environments.explain import BuildFailed
from tunelab.environments.lock import parse_lock
from tunelab.environments.spec import Spec
from tunelab.environments.uv import Interpreter, Uv

Log = Callable[[str, str], None]  # (phase, text)
MISSING = re.compile(r"(\S+) needs to be downloaded from a registry")
ATTEMPTS = 3


class Resolver:
    def __init__(self, uv: Uv, ttl_s: float) -> None:
        self.uv = uv
        self.ttl_s = ttl_s
        # indexes → package → when these indexes were last asked about it
        self._fetched: dict[str, dict[str, float]] = {}

    def resolve(self, spec: Spec, python: Interpreter, work: Path, log: Log, deadline: float) -> str:
        fetched = self._fetched.setdefault(self._indexes(spec), {})
        if self.ttl_s > 0 and fetched:
            text = self._offline(spec, python, work, log, deadline, fetched)
            if text:
                return text
        text = self.uv.compile(spec, python, work, lambda line: log("resolving", line), deadline)
        self._mark(fetched, text)
        return text

    def _offline(
        self,
        spec: Spec,
        python: Interpreter,
        work: Path,
        log: Log,
        deadline: float,
        fetched: dict[str, float],
    ) -> str:
        asked: set[str] = set()
        for _ in range(ATTEMPTS):
            quiet: list[str] = []
            try:
                text = self.uv.compile(spec, python, work, quiet.append, deadline, offline=True)
            except BuildFailed as exc:
                missing = sorted(set(MISSING.findall(exc.message)))
                if not missing or asked.issuperset(missing):  # nothing to ask, or asking did not help
                    return ""
                asked.update(missing)
                self._fetch_only(spec, python, work, missing, log, deadline, fetched)
                continue
            now = time.time()
            if not all(now - fetched.get(e.name, 0.0) <= self.ttl_s for e in parse_lock(text)):
                return ""
            for line in quiet:
                log("resolving", line)
            log(
                "resolving",
                f"resolved from index answers of the last {self.ttl_s:.0f}s (TUNELAB_RESOLVE_CACHE_TTL_S)",
            )
            return text
        return ""

    def _fetch_only(
        self,
        spec: Spec,
        python: Interpreter,
        work: Path,
        requirements: list[str],
        log: Log,
        deadline: float,
        fetched: dict[str, float],
    ) -> None:
        """Asks the index about ``requirements`` (and their dependencies) alone."""
        log("resolving", f"asking the index about {', '.join(requirements)}")
        part = replace(spec, requirements="\n".join(requirements), exclude=(), constraints="")
        fetch_dir = work / "fetch"
        fetch_dir.mkdir(exist_ok=True)
        try:
            self._mark(fetched, self.uv.compile(part, python, fetch_dir, lambda _: None, deadline))
        except BuildFailed:
            pass  # the full resolution that follows explains what is wrong

    def _indexes(self, spec: Spec) -> str:
        return " ".join(i.url for i in spec.indexes()) or self.uv.default_index_url

    @staticmethod
    def _mark(fetched: dict[str, float], lock: str) -> None:
        now = time.time()
        fetched.update({e.name: now for e in parse_lock(lock)})
