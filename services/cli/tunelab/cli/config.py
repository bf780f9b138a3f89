"""Where the CLI finds the services and its token: flags, then environment, then a config file.

Each setting is resolved on its own, first match wins:

1. a command-line flag (``--datasets-addr``, ``--gateway-url``, ``--token``, ...),
2. an environment variable (``TUNELAB_DATASETS_ADDR``, ``TUNELAB_GATEWAY_URL``, ``TUNELAB_TOKEN``, ...),
3. the config file, ``--config``, ``$TUNELAB_CONFIG`` or ``~/.config/tunelab/config.yaml``, e.g.::

       trainer_addr: tunelab.example.com:50053
       gateway_url: https://tunelab.example.com
       token: s3cr3t
       output: table

4. a default; for a service address (and the gateway's HTTP URL) that is the stack ``tunelab up``
   runs in the data dir, when it is running, else ``localhost:<default port>``; for the token, the
   one ``tunelab up`` keeps in the data dir (``DATA_DIR/token``, readable by its owner only).

:class:`Clients` makes the typed clients from a :class:`Config`, one channel per service.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.common.errors import InvalidArgument
from tunelab.common.settings import DEFAULT_HTTP_PORTS, DEFAULT_PORTS

if TYPE_CHECKING:
    import grpc

    from tunelab.cli.clients.datasets import DatasetClient

SERVICES = tuple(DEFAULT_PORTS)  # datasets, environments, trainer, gateway
# config-file key → environment variable
ENV_VARS: dict[str, str] = {
    **{f"{svc}_addr": f"TUNELAB_{svc.upper()}_ADDR" for svc in SERVICES},
    "gateway_url": "TUNELAB_GATEWAY_URL",
    "token": "TUNELAB_TOKEN",
    "data_dir": "TUNELAB_DATA_DIR",
    "cache_dir": "TUNELAB_CACHE_DIR",
    "output": "TUNELAB_OUTPUT",
}


@dataclass(frozen=True)
class Config:
    """Everything the CLI needs to reach the services."""

    addresses: Mapping[str, str]  # service → host:port
    token: str = ""
    data_dir: Path = field(default_factory=lambda: Path.home() / ".tunelab")
    # DatasetClient keeps blobs in cache_dir/blobs and file hashes in cache_dir/hashes.sqlite
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "tunelab")
    output: str = "table"
    gateway_url: str = f"http://localhost:{DEFAULT_HTTP_PORTS['gateway']}"  # the HTTP front door
    origin: Mapping[str, str] = field(default_factory=dict)  # setting → where it came from
    path: Path | None = None  # the config file consulted (it may not exist)

    def address(self, service: str) -> str:
        return self.addresses[service]


def config_path(env: Mapping[str, str], flag: str | None = None) -> Path:
    if flag:
        return Path(flag).expanduser()
    if env.get("TUNELAB_CONFIG"):
        return Path(env["TUNELAB_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "tunelab" / "config.yaml"


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's settings; a missing file is empty, a broken one an error naming it."""
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(f"cannot read the config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"config file {path}: expected a mapping of settings, got {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(ENV_VARS))
    if unknown:
        raise InvalidArgument(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(ENV_VARS)}"
        )
    return {k: str(v) for k, v in data.items() if v is not None}


def load_config(flags: Mapping[str, str | None], env: Mapping[str, str] | None = None) -> Config:
    """Resolves every setting from ``flags`` (None: not given), ``env`` and the config file
    (``flags["config"]``, else ``$TUNELAB_CONFIG``, else the default path)."""
    env = os.environ if env is None else env
    path = config_path(env, flags.get("config"))
    if flags.get("config") and not path.is_file():
        raise InvalidArgument(f"--config {path}: no such file")
    file = read_config_file(path)
    values: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, var in ENV_VARS.items():
        if flags.get(key) is not None:
            values[key], origin[key] = str(flags[key]), "flag"
        elif env.get(var):
            values[key], origin[key] = env[var], f"env {var}"
        elif key in file:
            values[key], origin[key] = file[key], str(path)

    data_dir = Path(values.get("data_dir", Path.home() / ".tunelab")).expanduser()
    addresses = {}
    for svc in SERVICES:
        addr = values.get(f"{svc}_addr") or _local_stack_address(data_dir, svc)
        addresses[svc] = addr or f"localhost:{DEFAULT_PORTS[svc]}"
        origin.setdefault(f"{svc}_addr", "local stack" if addr else "default")
    token = values.get("token", "")
    if "token" not in values:
        from tunelab.cli.stacktoken import read_token

        token = read_token(data_dir)
        origin["token"] = "local stack" if token else "default"
    gateway_url = values.get("gateway_url") or _local_stack_url(data_dir, "gateway")
    origin.setdefault("gateway_url", "local stack" if gateway_url else "default")
    if not gateway_url:
        host = addresses["gateway"].rsplit(":", 1)[0]
        gateway_url = f"http://{host}:{DEFAULT_HTTP_PORTS['gateway']}"
    if "://" not in gateway_url:
        raise InvalidArgument(
            f"gateway_url: {gateway_url!r} ({origin['gateway_url']}) must be a URL, e.g. http://localhost:8000"
        )
    output = values.get("output", "table").lower()
    if output not in ("table", "json", "yaml"):
        raise InvalidArgument(f"output: {output!r} ({origin['output']}) must be table, json or yaml")
    return Config(
        addresses=addresses,
        token=token,
        data_dir=data_dir,
        cache_dir=Path(values.get("cache_dir") or _default_cache_dir(env)).expanduser(),
        output=output,
        gateway_url=gateway_url.rstrip("/"),
        origin=origin,
        path=path,
    )


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "tunelab"


def _local_stack_address(data_dir: Path, service: str) -> str:
    """The address of ``service`` when ``tunelab up`` runs it from ``data_dir``."""
    from tunelab.cli.runstate import running_record

    record = running_record(data_dir, service)
    return record.address if record else ""


def _local_stack_url(data_dir: Path, service: str) -> str:
    """The HTTP URL of ``service`` when ``tunelab up`` runs it from ``data_dir``."""
    from tunelab.cli.runstate import running_record

    record = running_record(data_dir, service)
    return record.http_url if record else ""


class Clients:
    """Makes typed clients from a :class:`Config`; remembers which service it talked to last, so
    an unreachable service can be named in the error message."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.last_service = ""
        self._channels: dict[str, grpc.Channel] = {}

    def channel(self, service: str) -> grpc.Channel:
        self.last_service = service
        if service not in self._channels:
            from tunelab.common.grpc.channel import open_channel

            self._channels[service] = open_channel(self.config.address(service), self.config.token)
        return self._channels[service]

    def datasets(self) -> DatasetClient:
        from tunelab.cli.clients.datasets import DatasetClient

        self.config.cache_dir.mkdir(parents=True, exist_ok=True)
        return DatasetClient(
            self.channel("datasets"), self.config.cache_dir, address=self.config.address("datasets")
        )

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
