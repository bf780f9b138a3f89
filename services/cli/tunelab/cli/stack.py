"""The embedded stack: every service as a local process (``tunelab up``, ``down``, ``status``).

Each service runs as ``python -m tunelab.<service>``, configured by ``TUNELAB_*`` variables. Under
the data dir (default ``~/.tunelab``):

    logs/<service>.log    the service's output (appended across starts)
    run/<service>.pid     its process id
    run/<service>.json    how it was started: pid, module, address, metrics port, log
    datasets/ store/ ...  the services' own state

Ports: the defaults of ``tunelab.common.settings``; ``port_base`` moves them all (datasets at
base+0, environments +1, trainer +2, gateway +3); ``TUNELAB_<SERVICE>_PORT`` moves one. Metrics
ports likewise (``metrics_port_base``, ``TUNELAB_<SERVICE>_METRICS_PORT``; 0 turns /metrics off).
The gateway's HTTP port is ``http_port`` (else ``TUNELAB_HTTP_PORT``, else 8000); the run record
keeps it, so the CLI finds the front door of the stack it talks to.

Auth: every service requires the stack's token (``TUNELAB_AUTH_TOKEN``), which ``tunelab up``
makes once and keeps in ``DATA_DIR/token`` (mode 600, see ``stacktoken``), where the CLI finds it;
the gateway's routes require API keys. ``tunelab up --open`` runs the stack without either.

Environments are built on the stack's own interpreter (``TUNELAB_PYTHONS`` unless set): jobs run
through the agent on it, so it is the "image" whose packages an environment with system site
packages sees (see ``tunelab.cli.agent.image``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.cli.runstate import (
    RunRecord,
    ServiceStatus,
    StackError,
    _clear_record,
    _signal,
    _wait_gone,
    _write_record,
    check_health,
    log_tail,
    port_in_use,
    process_alive,
    read_record,
    run_dir,
    running_record,
)
from tunelab.common.settings import DEFAULT_HTTP_PORTS, DEFAULT_METRICS_PORTS, DEFAULT_PORTS

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack. It must run as ``python -m tunelab.<name>``, read ``TUNELAB_PORT``,
    ``TUNELAB_METRICS_PORT``, ``TUNELAB_DATA_DIR`` and ``TUNELAB_HOST``, and serve gRPC health."""

    name: str

    @property
    def module(self) -> str:
        return f"tunelab.{self.name}"


# The stack, in start order (`down` stops it in reverse). Adding a service is one line here.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("datasets"),
    ServiceSpec("environments"),
    ServiceSpec("trainer"),
    ServiceSpec("gateway"),
)


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    token: str = ""  # TUNELAB_AUTH_TOKEN of every service (``stacktoken``); empty only with open_access
    open_access: bool = False  # no token, and the gateway's API keys off: anyone on the machine may call
    token_is_new: bool = False  # made or changed by this start: services running already lack it
    host: str = "127.0.0.1"
    store_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_secure: bool | None = None
    port_base: int | None = None
    metrics_port_base: int | None = None
    http_port_value: int | None = None
    start_timeout_s: float = 60.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def port(self, spec: ServiceSpec) -> int:
        return self._port(spec, "PORT", self.port_base, DEFAULT_PORTS)

    def metrics_port(self, spec: ServiceSpec) -> int:
        if self.metrics_port_base == 0:
            return 0
        return self._port(spec, "METRICS_PORT", self.metrics_port_base, DEFAULT_METRICS_PORTS)

    def _port(self, spec: ServiceSpec, what: str, base: int | None, defaults: dict[str, int]) -> int:
        var = f"TUNELAB_{spec.name.upper()}_{what}"
        if self.env.get(var):
            try:
                return int(self.env[var])
            except ValueError:
                raise StackError(f"{var}={self.env[var]!r} is not a port number") from None
        if base is not None:
            return base + defaults[spec.name] - defaults[SERVICES[0].name]
        return defaults[spec.name]

    def http_port(self, spec: ServiceSpec) -> int:
        """The service's HTTP port (the gateway's front door); 0 for a service without one."""
        if spec.name not in DEFAULT_HTTP_PORTS:
            return 0
        if self.http_port_value is not None:
            return self.http_port_value
        if self.env.get("TUNELAB_HTTP_PORT"):
            try:
                return int(self.env["TUNELAB_HTTP_PORT"])
            except ValueError:
                raise StackError(
                    f"TUNELAB_HTTP_PORT={self.env['TUNELAB_HTTP_PORT']!r} is not a port number"
                ) from None
        return DEFAULT_HTTP_PORTS[spec.name]

    def address(self, spec: ServiceSpec) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"{host}:{self.port(spec)}"


def _all_records(data_dir: Path) -> list[RunRecord]:
    """Every recorded service, in stop order: the reverse of start order, unknown ones first."""
    order = {spec.name: i for i, spec in enumerate(SERVICES)}
    names = sorted((p.stem for p in run_dir(data_dir).glob("*.pid")), key=lambda n: -order.get(n, len(order)))
    return [rec for name in names if (rec := read_record(data_dir, name))]


# -- processes ---------------------------------------------------------------------------------


def up(opts: StackOptions, echo: Echo) -> list[RunRecord]:
    """Starts every service not already running; returns when all report SERVING."""
    records = []
    for spec in SERVICES:
        rec = running_record(opts.data_dir, spec.name)
        if rec:
            echo(f"{spec.name} is already running (pid {rec.pid}, {rec.address})")
            if opts.token_is_new:
                echo(
                    f"  it was started with another token or none: restart it with the stack's token "
                    f"by `tunelab down --data-dir {opts.data_dir}`, then `tunelab up` again"
                )
        else:
            proc, rec = _start(opts, spec, echo, foreground=False)
            with warnings.catch_warnings():  # it outlives us on purpose; its pid file tracks it
                warnings.simplefilter("ignore", ResourceWarning)
                del proc
        records.append(rec)
    return records


def run_foreground(opts: StackOptions, echo: Echo) -> int:
    """Starts the stack attached to this terminal and stops it on Ctrl-C, SIGTERM or when a
    service exits. Returns the exit code (1 when a service died)."""
    for spec in SERVICES:
        if rec := running_record(opts.data_dir, spec.name):
            raise StackError(
                f"{spec.name} is already running in the background (pid {rec.pid}); "
                f"stop it with `tunelab down --data-dir {opts.data_dir}` first"
            )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = 0
    try:
        procs = {spec.name: _start(opts, spec, echo, foreground=True)[0] for spec in SERVICES}
        echo("the stack is up; Ctrl-C stops it")
        while not stop.is_set():
            for name, proc in procs.items():
                if proc.poll() is not None:
                    echo(f"{name} exited with status {proc.returncode}; stopping the stack")
                    code = 1
                    stop.set()
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        down(opts.data_dir, echo)
    return code


def _start(
    opts: StackOptions, spec: ServiceSpec, echo: Echo, *, foreground: bool
) -> tuple[subprocess.Popen[bytes], RunRecord]:
    if importlib.util.find_spec(spec.module) is None:
        raise StackError(f"{spec.module} is not installed in {sys.executable}: install tunelab-{spec.name}")
    _clear_record(opts.data_dir, spec.name)  # a stale record from a crashed run
    port, metrics_port, http_port = opts.port(spec), opts.metrics_port(spec), opts.http_port(spec)
    _check_free(opts.host or "127.0.0.1", port, spec, "gRPC", f"TUNELAB_{spec.name.upper()}_PORT")
    if metrics_port:
        _check_free("0.0.0.0", metrics_port, spec, "metrics", f"TUNELAB_{spec.name.upper()}_METRICS_PORT")
    if http_port:
        _check_free(opts.host or "127.0.0.1", http_port, spec, "HTTP", "TUNELAB_HTTP_PORT", "--http-port N")

    log = opts.data_dir / "logs" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        if not foreground:
            out.write(f"--- tunelab up: {spec.module} at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
            out.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            env=_service_env(opts, spec, port, metrics_port, http_port),
            cwd=opts.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=None if foreground else out,
            stderr=None if foreground else subprocess.STDOUT,
            start_new_session=not foreground,  # background services outlive this shell's Ctrl-C
        )
    rec = RunRecord(
        spec.name, proc.pid, spec.module, opts.address(spec), metrics_port, str(log), time.time(), http_port
    )
    _write_record(opts.data_dir, rec)
    try:
        _wait_serving(proc, rec, opts.token, opts.start_timeout_s, foreground)
    except BaseException:
        _signal(proc.pid, signal.SIGKILL)
        proc.wait()
        _clear_record(opts.data_dir, spec.name)
        raise
    front = f", HTTP {rec.http_url}" if rec.http_url else ""
    echo(f"{spec.name} is up: pid {proc.pid}, {rec.address}{front}" + ("" if foreground else f", log {log}"))
    return proc, rec


def _check_free(
    host: str, port: int, spec: ServiceSpec, what: str, var: str, flag: str = "--port-base N"
) -> None:
    if port_in_use(host, port):
        raise StackError(
            f"cannot start {spec.name}: its {what} port {port} on {host} is already in use by another "
            f"process. Stop that process, or choose other ports with `tunelab up {flag}` "
            f"(or {var}=N)."
        )


def _service_env(
    opts: StackOptions, spec: ServiceSpec, port: int, metrics_port: int, http_port: int = 0
) -> dict[str, str]:
    # Inherit the caller's environment (PATH, proxies, and TUNELAB_* settings such as
    # TUNELAB_ALLOW_PRIVATE_ADDRESSES or TUNELAB_LOG_LEVEL pass through), then set the stack's own.
    env = dict(opts.env)
    env.update(
        TUNELAB_DATA_DIR=str(opts.data_dir),
        TUNELAB_HOST=opts.host,
        TUNELAB_PORT=str(port),
        TUNELAB_METRICS_PORT=str(metrics_port),
        PYTHONUNBUFFERED="1",
    )
    if http_port:
        env["TUNELAB_HTTP_PORT"] = str(http_port)
    if spec.name == "environments" and not env.get("TUNELAB_PYTHONS"):
        env["TUNELAB_PYTHONS"] = json.dumps([sys.executable])  # the interpreter jobs run on
    # Every service learns where the others are (the same variables the CLI reads).
    env.update({f"TUNELAB_{other.name.upper()}_ADDR": opts.address(other) for other in SERVICES})
    if opts.open_access:
        env.pop("TUNELAB_AUTH_TOKEN", None)
        if spec.name == "gateway":
            env["TUNELAB_API_KEY_AUTH"] = "off"
    elif not opts.token:
        raise StackError("the stack needs a token to start with (or --open, to run without auth)")
    optional = {
        "TUNELAB_AUTH_TOKEN": opts.token,
        "TUNELAB_STORE_URL": opts.store_url,
        "TUNELAB_S3_ENDPOINT": opts.s3_endpoint,
        "TUNELAB_S3_ACCESS_KEY": opts.s3_access_key,
        "TUNELAB_S3_SECRET_KEY": opts.s3_secret_key,
    }
    env.update({k: v for k, v in optional.items() if v})
    if opts.s3_secure is not None:
        env["TUNELAB_S3_SECURE"] = "true" if opts.s3_secure else "false"
    return env


def _wait_serving(
    proc: subprocess.Popen[bytes], rec: RunRecord, token: str, timeout_s: float, foreground: bool
) -> None:
    where = "the output above" if foreground else rec.log
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            tail = "" if foreground else f"; its last log lines:\n{log_tail(rec.log)}"
            raise StackError(f"{rec.service} exited with status {code} while starting (see {where}){tail}")
        if check_health(rec.address, token, timeout_s=1.0) == "SERVING":
            return
        if time.monotonic() > deadline:
            raise StackError(f"{rec.service} did not report SERVING within {timeout_s:.0f}s; see {where}")
        time.sleep(0.1)


def down(data_dir: Path, echo: Echo, grace_s: float = 20.0) -> int:
    """Stops every service started from ``data_dir``: SIGTERM, then SIGKILL after ``grace_s``.
    Returns how many were running."""
    records = _all_records(data_dir)
    stopped = 0
    for rec in records:
        if not process_alive(rec.pid, rec.module):
            echo(f"{rec.service} was not running (removed its stale pid file)")
            _clear_record(data_dir, rec.service)
            continue
        _signal(rec.pid, signal.SIGTERM)
        if not _wait_gone(rec.pid, rec.module, grace_s):
            echo(f"{rec.service} did not stop within {grace_s:.0f}s of SIGTERM; killing it")
            _signal(rec.pid, signal.SIGKILL)
            _wait_gone(rec.pid, rec.module, 5.0)
        _clear_record(data_dir, rec.service)
        echo(f"stopped {rec.service} (pid {rec.pid})")
        stopped += 1
    if not records:
        echo(f"nothing is running from {data_dir}")
    return stopped


def status(data_dir: Path, token: str = "") -> list[ServiceStatus]:
    """Each service of the stack (and any other recorded one): state, pid, address, health."""
    names = [spec.name for spec in SERVICES]
    names += [rec.service for rec in _all_records(data_dir) if rec.service not in names]
    result = []
    for name in names:
        rec = read_record(data_dir, name)
        log = str(data_dir / "logs" / f"{name}.log")
        if rec is None:
            result.append(ServiceStatus(name, "stopped", None, "", "-", log))
        elif not process_alive(rec.pid, rec.module):
            result.append(ServiceStatus(name, "exited", rec.pid, rec.address, "-", rec.log or log))
        else:
            health = check_health(rec.address, token) if rec.address else "UNKNOWN"
            result.append(ServiceStatus(name, "running", rec.pid, rec.address, health, rec.log or log))
    return result
