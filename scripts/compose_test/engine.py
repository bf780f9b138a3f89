"""A Docker engine of the test's own: Debian's dockerd inside a network namespace it creates.

Containers never reach past that namespace: their traffic stays on its bridges, and requests of
the test go to 127.0.0.1 there (``Engine.inside`` runs a command in it). Image builds reach the
package registries (PyPI, Debian's archive) through ``RegistryProxy``: a forward proxy on the
host end of a veth pair that connects only to the hosts it is given. Everything is torn down on
exit, on failure too: containers, dockerd, the veth pair, the namespace and the temporary data root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Debian's client, the same release as the daemon (another `docker` on PATH may be newer than it speaks).
DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
REGISTRY_HOSTS = ("pypi.org", "files.pythonhosted.org", "deb.debian.org")
HOST_ADDR, NS_ADDR = "10.213.77.1", "10.213.77.2"
BRIDGE = "172.31.0.1/24"  # docker0 inside the namespace: the address containers reach the namespace on


def sh(
    *argv: str, check: bool = True, capture: bool = False, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, text=True, capture_output=capture, **kw)  # type: ignore[call-overload]


class RegistryProxy:
    """HTTP forward proxy (CONNECT for https, absolute-form GET for http) limited to ``hosts``."""

    def __init__(self, bind: str, hosts: Sequence[str]) -> None:
        self.bind, self.hosts = bind, set(hosts)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.refused: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def start(self) -> None:
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, self.bind, 0), self._loop)
        self._thread.start()
        self._server = server.result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                if host not in self.hosts:
                    return self._refuse(writer, target)
                up_r, up_w = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                if not target.startswith("http://"):
                    return self._refuse(writer, target)
                hostport, _, path = target[len("http://") :].partition("/")
                host, _, port = hostport.partition(":")
                if host not in self.hosts:
                    return self._refuse(writer, target)
                up_r, up_w = await asyncio.open_connection(host, int(port or 80))
                lines = head.decode("latin-1").split("\r\n")[1:]
                kept = [ln for ln in lines if ln and not ln.lower().startswith(("connection:", "proxy-"))]
                request = [f"{method} /{path} {version}", *kept, "Connection: close", "", ""]
                up_w.write("\r\n".join(request).encode("latin-1"))
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _refuse(self, writer: asyncio.StreamWriter, target: str) -> None:
        self.refused.append(target)
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(1 << 16):
                dst.write(chunk)
                await dst.drain()
        finally:
            with contextlib.suppress(OSError):
                dst.write_eof()


@dataclass
class Engine:
    """The running engine: its socket, namespace and proxy."""

    name: str
    root: Path
    proxy: RegistryProxy

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for docker and compose clients talking to this engine."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.root / 'docker.sock'}", "DOCKER_BUILDKIT": "0"}

    def inside(self, *argv: str) -> list[str]:
        """``argv`` run in the engine's network namespace (nsenter, so /sys stays as it is)."""
        return ["nsenter", f"--net={self.netns}", *argv]

    def docker(
        self, *args: str, check: bool = True, capture: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return sh(DOCKER, *args, check=check, capture=capture, env=self.env)

    def build_args(self) -> list[str]:
        """Proxy settings for image builds (Docker's predefined build args: not kept in the image)."""
        out = []
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            out += ["--build-arg", f"{key}={self.proxy.url}"]
        for key in ("NO_PROXY", "no_proxy"):
            out += ["--build-arg", f"{key}={HOST_ADDR},{BRIDGE.split('/')[0]},localhost,127.0.0.1"]
        return out


@contextlib.contextmanager
def engine(root: Path, name: str = "tunelab-compose-test") -> Iterator[Engine]:
    """Starts dockerd in a new namespace with data under ``root``; stops and removes it all after."""
    cleanup: list[tuple[str, list[str]]] = []
    proxy = RegistryProxy(HOST_ADDR, REGISTRY_HOSTS)
    host_if, ns_if = "tlct-h", "tlct-n"
    daemon: subprocess.Popen[bytes] | None = None
    try:
        if Path(f"/run/netns/{name}").exists():  # left by a run that was killed
            sh("ip", "netns", "delete", name, check=False)
        sh("ip", "link", "delete", host_if, check=False, capture=True)
        sh("ip", "netns", "add", name)
        cleanup.append(("namespace", ["ip", "netns", "delete", name]))
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        cleanup.append(("veth pair", ["ip", "link", "delete", host_if]))
        sh("ip", "link", "set", ns_if, "netns", name)
        sh("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", name, "addr", "add", f"{NS_ADDR}/30", "dev", ns_if)
        sh("ip", "-n", name, "link", "set", ns_if, "up")
        proxy.start()
        eng = Engine(name, root, proxy)
        for d in ("data", "exec"):
            (root / d).mkdir(parents=True, exist_ok=True)
        log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed with the daemon
        daemon = subprocess.Popen(
            eng.inside(
                "dockerd", f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}",
                f"--pidfile={root / 'dockerd.pid'}", f"--host=unix://{root / 'docker.sock'}",
                "--containerd-namespace=tunelab-test", "--containerd-plugins-namespace=tunelab-test-plugins",
                "--default-runtime=runc", f"--bip={BRIDGE}", "--default-ulimit=nofile=20000:20000",
                "--default-ulimit=nproc=32768:32768", "--log-level=warn",
            ),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while eng.docker("version", check=False, capture=True).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; its log: {root / 'dockerd.log'}")
            time.sleep(0.5)
        yield eng
    finally:
        if daemon is not None:
            stop_daemon(root, daemon)
        with contextlib.suppress(Exception):
            proxy.stop()
        for what, argv in reversed(cleanup):
            if sh(*argv, check=False, capture=True).returncode != 0:
                print(f"compose-test: could not remove the {what}: {' '.join(argv)}", flush=True)


def stop_daemon(root: Path, daemon: subprocess.Popen[bytes]) -> None:
    """Removes every container, then stops dockerd (and the containerd it started)."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{root / 'docker.sock'}"}
    ids = sh(DOCKER, "ps", "-aq", check=False, capture=True, env=env).stdout.split()
    if ids:
        sh(DOCKER, "rm", "-f", *ids, check=False, capture=True, env=env)
    daemon.terminate()
    try:
        daemon.wait(60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(30)
