"""Helpers the tests share: free ports, real S3 servers' coordinates, services started as processes.

Import them as ``from support import …`` (a module name no test folder reuses; ``conftest`` is
ambiguous once several test folders have one).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from minio import Minio

CHATGLM3_FIXTURE_MISSING = (
    "the ChatGLM3 fixture (../shared/fixtures/chatglm3-6b-tiny beside the repository, or "
    "$TUNELAB_CHATGLM3_FIXTURE) is absent: these tests compare against THUDM's own code, which the "
    "project never copies"
)


def chatglm3_fixture_dir() -> Path | None:
    """THUDM's chatglm3-6b layout with tiny sizes and THUDM's code (read-only), if it is there."""
    configured = os.environ.get("TUNELAB_CHATGLM3_FIXTURE")
    repo = Path(__file__).resolve().parents[1]
    path = Path(configured) if configured else repo.parent / "shared" / "fixtures" / "chatglm3-6b-tiny"
    return path if (path / "modeling_chatglm.py").is_file() else None


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """An ASGI app (uvicorn, a free port on 127.0.0.1) in a daemon thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_base(count: int = 4) -> int:
    """A port P such that P … P+count-1 are all free (for `tunelab up --port-base P`)."""
    for _ in range(50):
        base = free_port()
        if base + count > 65535:
            continue
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    ok = False
                    break
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free ports found")


@dataclass
class S3Server:
    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"

    def client(self) -> Minio:
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def env(self, bucket: str) -> dict[str, str]:
        return {
            "TUNELAB_STORE_URL": f"s3://{bucket}",
            "TUNELAB_S3_ENDPOINT": self.endpoint,
            "TUNELAB_S3_ACCESS_KEY": self.access_key,
            "TUNELAB_S3_SECRET_KEY": self.secret_key,
            "TUNELAB_S3_SECURE": "false",
        }


# A channel whose first calls found nothing listening backs off before it tries again (1 s, then
# 1.6 times longer each time): on a loaded machine, where a service takes 15 s to start, a health poll
# on such a channel noticed it seconds late. These keep its retries at most 1 s apart.
QUICK_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def wait_serving(address: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Waits until the service at ``address`` answers SERVING (generous: a loaded machine is slow)."""
    deadline = time.monotonic() + timeout
    channel = grpc.insecure_channel(address, options=QUICK_RECONNECT)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service exited with {proc.returncode}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    finally:
        channel.close()
    raise TimeoutError(f"service at {address} did not become SERVING in {timeout}s")


@dataclass
class ServiceProcess:
    """A tunelab service started as a real process (``python -m tunelab.<name>``)."""

    name: str
    env: dict[str, str]
    log: Path
    address: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        env = {**os.environ, **self.env, "TUNELAB_PORT": str(port), "TUNELAB_METRICS_PORT": "0"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"tunelab.{self.name}"], env=env, stdout=out, stderr=out
            )
        wait_serving(self.address, proc=self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SERVICES = ("datasets", "environments", "trainer", "gateway")


@contextmanager
def service_stack(
    root: Path, env: dict[str, str] | None = None, per_service: dict[str, dict[str, str]] | None = None
) -> Iterator[dict[str, ServiceProcess]]:
    """The four services as real processes, wired to each other, all started at once (a loaded
    machine starts four Pythons faster side by side than one after another); stopped at the end.

    ``env`` goes to every service, ``per_service[name]`` to one. Each has its own data directory
    and log under ``root``; the gateway's HTTP port is in ``stack["gateway"].env``.
    """
    ports = {name: free_port() for name in SERVICES}
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    wiring = {
        "trainer": {
            "TUNELAB_DATASETS_ADDR": addr["datasets"],
            "TUNELAB_ENVIRONMENTS_ADDR": addr["environments"],
        },
        "gateway": {
            "TUNELAB_DATASETS_ADDR": addr["datasets"],
            "TUNELAB_TRAINER_ADDR": addr["trainer"],
            "TUNELAB_HTTP_PORT": str(free_port()),
        },
    }
    stack: dict[str, ServiceProcess] = {}
    try:
        for name in SERVICES:
            values = {
                "TUNELAB_DATA_DIR": str(root / name),
                **(env or {}),
                **wiring.get(name, {}),
                **(per_service or {}).get(name, {}),
            }
            svc = ServiceProcess(name, values, root / f"{name}.log", address=addr[name])
            full = {**os.environ, **values, "TUNELAB_PORT": str(ports[name]), "TUNELAB_METRICS_PORT": "0"}
            with svc.log.open("ab") as out:
                svc.proc = subprocess.Popen(
                    [sys.executable, "-m", f"tunelab.{name}"], env=full, stdout=out, stderr=out
                )
            stack[name] = svc
        for svc in stack.values():
            try:
                wait_serving(svc.address, proc=svc.proc)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{svc.name}: {exc}\n{svc.log.read_text()[-3000:]}") from exc
        yield stack
    finally:
        for svc in stack.values():
            if svc.proc and svc.proc.poll() is None:
                svc.proc.terminate()
        for svc in stack.values():
            svc.stop()


def start_together(processes: list[ServiceProcess], timeout: float = 120.0) -> None:
    """Starts service processes at the same moment (replicas racing on an empty database)."""
    threads = [threading.Thread(target=p.start) for p in processes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
