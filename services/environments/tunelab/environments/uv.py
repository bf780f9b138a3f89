"""uv as a subprocess: find interpreters, resolve a spec to a lock, create a venv, install a lock.

Credentials reach uv only through its environment (``UV_DEFAULT_INDEX`` / ``UV_INDEX`` with the
user and password in the URL), never its command line, and every line uv prints passes through a
:class:`Redactor` before it is logged or stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tunelab.common.errors import InvalidArgument
from tunelab.environments.explain import BuildFailed, explain
from tunelab.environments.spec import Spec

OnLine = Callable[[str], None]
REDISCOVER_S = 60.0

PROBE = (
    "import json, os, platform, sys, sysconfig; libc = platform.libc_ver(); "
    "print(json.dumps({'path': os.path.realpath(sys.executable), 'version': platform.python_version(), "
    "'machine': platform.machine(), 'libc': libc[0], 'libc_version': libc[1], "
    "'platform': sysconfig.get_platform()}))"
)


class Redactor:
    """Replaces secrets (and their URL-encoded forms) with ``****``."""

    def __init__(self, secrets: list[str]) -> None:
        forms = {s for secret in secrets if secret for s in (secret, quote(secret, safe=""))}
        self._secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str  # exact, e.g. 3.11.7
    platform: str  # e.g. x86_64-manylinux_2_36


@dataclass
class Uv:
    """Runs uv with a shared cache, no user or project config, and no interpreter downloads."""

    uv_bin: str
    cache_dir: Path
    http_timeout_s: int = 30
    http_retries: int = 2
    default_index_url: str = ""
    pythons: list[str] = field(default_factory=list)
    _interpreters: list[Interpreter] | None = None
    _found_at: float = 0.0
    _discovery: threading.Lock = field(default_factory=threading.Lock)

    # -- interpreters ---------------------------------------------------------------------------
    def interpreters(self, refresh: bool = False) -> list[Interpreter]:
        """The usable interpreters (probed once; a refresh at most once a minute: probing is slow)."""
        with self._discovery:
            stale = refresh and time.monotonic() - self._found_at > REDISCOVER_S
            if self._interpreters is None or stale:
                candidates = self.pythons or self._discovered()
                found: dict[str, Interpreter] = {}
                for path in candidates:
                    interp = _probe(path)
                    if interp is not None:
                        found.setdefault(interp.path, interp)
                self._interpreters = list(found.values())
                self._found_at = time.monotonic()
            return self._interpreters

    def _discovered(self) -> list[str]:
        proc = subprocess.run(
            [self.uv_bin, "python", "list", "--only-installed", "--output-format", "json", "--no-config"],
            capture_output=True,
            text=True,
            env=self._env({}),
            timeout=60,
        )
        try:
            return [str(entry["path"]) for entry in json.loads(proc.stdout or "[]")]
        except (ValueError, KeyError, TypeError):
            return []

    def find_python(self, version: str) -> Interpreter:
        """The first interpreter whose version is ``version`` or starts with it ("3.11")."""
        for refresh in (False, True):
            for interp in self.interpreters(refresh):
                if not version or interp.version == version or interp.version.startswith(version + "."):
                    return interp
        available = ", ".join(sorted({i.version for i in self.interpreters()})) or "none"
        raise InvalidArgument(
            f"spec.python_version: Python {version or '(any)'} is not available on this server; "
            f"available: {available}. "
            "Set spec.python_version to one of those, or ask the operator to add an interpreter "
            "(TUNELAB_PYTHONS)"
        )

    # -- commands ---------------------------------------------------------------------------------
    def compile(
        self,
        spec: Spec,
        python: Interpreter,
        work: Path,
        on_line: OnLine,
        deadline: float,
        offline: bool = False,
    ) -> str:
        """Resolves the spec to a lock with hashes; returns the lock text. ``offline`` resolves from
        the index pages in uv's cache alone (and fails when one is missing)."""
        (work / "requirements.in").write_text(spec.requirements + "\n")
        (work / "lock.txt").unlink(missing_ok=True)  # an existing output would pin its versions
        args = ["pip", "compile", "--no-header", "--generate-hashes", "--python", python.path]
        if offline:
            args.append("--offline")
        args += self._target_args(spec)
        if spec.exclude:
            (work / "excludes.txt").write_text("\n".join(spec.exclude) + "\n")
            args += ["--excludes", "excludes.txt"]
        if spec.constraints.strip():
            (work / "constraints.txt").write_text(spec.constraints + "\n")
            args += ["--constraints", "constraints.txt"]
        if spec.exclude_newer:
            args += ["--exclude-newer", spec.exclude_newer]
        args += ["requirements.in", "--output-file", "lock.txt"]
        self._run("resolving", args, spec, work, on_line, deadline)
        return (work / "lock.txt").read_text()

    def venv(self, spec: Spec, python: Interpreter, dest: Path, on_line: OnLine, deadline: float) -> None:
        args = ["venv", "--quiet", "--relocatable", "--python", python.path, str(dest)]
        if spec.include_system_site_packages:
            args.insert(1, "--system-site-packages")
        self._run("installing", args, spec, dest.parent, on_line, deadline)

    def sync(self, spec: Spec, venv: Path, lock: Path, on_line: OnLine, deadline: float) -> None:
        args = ["pip", "sync", "--require-hashes", "--python", str(venv / "bin" / "python")]
        args += [*self._target_args(spec), str(lock)]
        self._run("installing", args, spec, lock.parent, on_line, deadline)

    def _target_args(self, spec: Spec) -> list[str]:
        args = []
        if spec.platform:
            args += ["--python-platform", spec.platform]
        if spec.torch_backend:
            args += ["--torch-backend", spec.torch_backend]
        return args

    def _env(self, spec_env: dict[str, str]) -> dict[str, str]:
        # Nothing of the service's own environment that could redirect uv or pip leaks in.
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("UV_", "PIP_", "VIRTUAL_ENV", "CONDA_", "PYTHON"))
        }
        return {
            **keep,
            "UV_CACHE_DIR": str(self.cache_dir),
            "UV_NO_CONFIG": "1",
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_HTTP_TIMEOUT": str(self.http_timeout_s),
            "UV_HTTP_RETRIES": str(self.http_retries),
            "UV_NO_PROGRESS": "1",
            "NO_COLOR": "1",
            **spec_env,
        }

    def _index_env(self, spec: Spec) -> dict[str, str]:
        env = {}
        if spec.default_index:
            env["UV_DEFAULT_INDEX"] = spec.default_index.url_with_credentials()
        elif self.default_index_url:
            env["UV_DEFAULT_INDEX"] = self.default_index_url
        if spec.extra_indexes:
            env["UV_INDEX"] = " ".join(i.url_with_credentials() for i in spec.extra_indexes)
        return env

    def _run(
        self, phase: str, args: list[str], spec: Spec, cwd: Path, on_line: OnLine, deadline: float
    ) -> None:
        redact = Redactor(spec.secrets())
        lines: list[str] = []
        proc = subprocess.Popen(
            [self.uv_bin, *args],
            cwd=cwd,
            env=self._env(self._index_env(spec)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert proc.stderr is not None
        timer = _Killer(proc, deadline)
        try:
            for raw in proc.stderr:
                line = redact(raw.rstrip("\n"))
                lines.append(line)
                on_line(line)
            code = proc.wait()
        finally:
            timer.cancel()
        if timer.fired:
            raise BuildFailed(
                f"{phase} took longer than the build timeout (TUNELAB_BUILD_TIMEOUT_S); gave up"
            )
        if code != 0:
            raise BuildFailed(explain(phase, lines, spec))


class _Killer:
    """Kills a process group once the build's deadline passes."""

    def __init__(self, proc: subprocess.Popen[str], deadline: float) -> None:
        self.fired = False
        self._proc = proc
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self) -> None:
        self.fired = True
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def _probe(path: str) -> Interpreter | None:
    try:
        out = subprocess.run([path, "-I", "-c", PROBE], capture_output=True, text=True, timeout=30)
        info = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if info["libc"] == "glibc" and info["libc_version"]:
        major, _, minor = str(info["libc_version"]).partition(".")
        platform = f"{info['machine']}-manylinux_{major}_{minor.split('.')[0]}"
    else:
        platform = str(info["platform"])
    return Interpreter(str(info["path"]), str(info["version"]), platform)
