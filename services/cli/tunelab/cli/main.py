"""``tunelab``: the command line. ``main()`` is the console-script entry.

Commands import what they need inside their bodies, so ``tunelab --help`` stays fast. Errors are
turned into messages in one place, :class:`TunelabGroup`: gRPC status → the server's message (or a
hint for an unreachable service), typed local errors → their message; both exit 1. Usage errors
exit 2 (typer).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from tunelab.cli.commands import agent, configure, datasets, environments, jobs, modelimport, models, queues
from tunelab.cli.output import Format


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True).print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    return typer.Exit(code)


class TunelabGroup(TyperGroup):
    """The root command; maps the errors commands raise to messages and exit codes."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            friendly = _friendly(exc, ctx.obj)
            if friendly is None:
                raise
            raise friendly from None


# What gRPC says when the client never reached a server (an UNAVAILABLE the server itself sends,
# e.g. for an unreachable object store, carries the server's own message instead).
_CONNECT_FAILURES = (
    "failed to connect",
    "connection refused",
    "dns resolution",
    "socket closed",
    "connection reset",
)


def _friendly(exc: Exception, clients: Any) -> typer.Exit | None:
    """The message and exit for an error a command raised; None: not ours to explain."""
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        service = getattr(clients, "last_service", "") or "the service"
        address = clients.config.address(service) if service != "the service" else ""
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and any(s in details.lower() for s in _CONNECT_FAILURES):
            where = f"{service} at {address}" if address else service
            return _fail(f"cannot reach {where} — is `tunelab up` running?")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return _fail(
                f"{service} refused the token: {details} (set --token, TUNELAB_TOKEN or `token` in the "
                "config file: `tunelab config set token …`; a stack `tunelab up` started keeps its token "
                f"in {clients.config.data_dir / 'token'})"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return _fail(f"{service} did not answer in time: {details or 'deadline exceeded'}")
        return _fail(details or f"{service} answered {code.name}")
    from tunelab.common.errors import TunelabError

    if isinstance(exc, TunelabError):
        return _fail(exc.message)
    return None


app = typer.Typer(
    name="tunelab",
    cls=TunelabGroup,
    help="tunelab: fine-tune LLMs on your own machines. Start the local stack with `tunelab up`.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
)
RESOURCES = "Resources"
app.add_typer(datasets.app, name="dataset", rich_help_panel=RESOURCES)
app.add_typer(environments.app, name="env", rich_help_panel=RESOURCES)
app.add_typer(jobs.app, name="job", rich_help_panel=RESOURCES)
app.add_typer(queues.app, name="queue", rich_help_panel=RESOURCES)
models.app.command("import")(modelimport.import_model)
app.add_typer(models.app, name="model", rich_help_panel=RESOURCES)
app.add_typer(models.keys, name="key", rich_help_panel=RESOURCES)


def _addr_opt(service: str, port: int) -> Any:
    return typer.Option(
        f"--{service}-addr",
        help=f"host:port of the {service} service. Else TUNELAB_{service.upper()}_ADDR, the config file, "
        f"the stack `tunelab up` runs, localhost:{port}.",
        show_default=False,
        rich_help_panel="Where the services are",
    )


@app.callback()
def root(
    ctx: typer.Context,
    datasets_addr: Annotated[str | None, _addr_opt("datasets", 50051)] = None,
    environments_addr: Annotated[str | None, _addr_opt("environments", 50052)] = None,
    trainer_addr: Annotated[str | None, _addr_opt("trainer", 50053)] = None,
    gateway_addr: Annotated[str | None, _addr_opt("gateway", 50054)] = None,
    gateway_url: Annotated[
        str | None,
        typer.Option(
            "--gateway-url",
            help="The gateway's HTTP front door. Else TUNELAB_GATEWAY_URL, the config file, the stack "
            "`tunelab up` runs, port 8000 of the gateway's host.",
            show_default=False,
            rich_help_panel="Where the services are",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Bearer token for the services. Else TUNELAB_TOKEN or the config file.",
            show_default=False,
            rich_help_panel="Where the services are",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="The config file. Else TUNELAB_CONFIG, ~/.config/tunelab/config.yaml.",
            show_default=False,
            rich_help_panel="Where the services are",
        ),
    ] = None,
) -> None:
    """Global options come before the command: tunelab --trainer-addr host:50053 job ls

    Each setting comes from its flag, else its TUNELAB_* variable, else the config file
    (~/.config/tunelab/config.yaml or $TUNELAB_CONFIG, e.g. `trainer_addr: host:50053`,
    `token: …`, `output: json`), else the stack `tunelab up` runs. `tunelab config show` prints
    what is in effect and where it came from. Shell completion: `tunelab --install-completion`.
    """
    from tunelab.cli.config import Clients, load_config

    flags = {
        "datasets_addr": datasets_addr,
        "environments_addr": environments_addr,
        "trainer_addr": trainer_addr,
        "gateway_addr": gateway_addr,
        "gateway_url": gateway_url,
        "token": token,
        "config": config,
    }
    ctx.obj = Clients(load_config(flags))
    ctx.call_on_close(ctx.obj.close)


DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The stack's directory. Else TUNELAB_DATA_DIR, the config file, ~/.tunelab.",
        show_default=False,
    ),
]


def _data_dir(ctx: typer.Context, data_dir: Path | None) -> Path:
    return (data_dir or ctx.obj.config.data_dir).expanduser().resolve()


@app.command()
def up(
    ctx: typer.Context,
    data_dir: DataDirOpt = None,
    store_url: Annotated[
        str,
        typer.Option(help="file:///dir or s3://bucket (default: DATA_DIR/store). Else TUNELAB_STORE_URL."),
    ] = "",
    s3_endpoint: Annotated[
        str, typer.Option(help="host:port of S3/MinIO for an s3:// store. Else TUNELAB_S3_ENDPOINT.")
    ] = "",
    s3_access_key: Annotated[str, typer.Option(help="Else TUNELAB_S3_ACCESS_KEY.")] = "",
    s3_secret_key: Annotated[str, typer.Option(help="Else TUNELAB_S3_SECRET_KEY.", show_default=False)] = "",
    s3_insecure: Annotated[
        bool, typer.Option("--s3-insecure", help="Plain http to the S3 endpoint.")
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            help="Token the services require (default: the global --token / TUNELAB_TOKEN / config file, "
            "else the one in DATA_DIR/token, else a new random one written there, mode 600).",
            show_default=False,
        ),
    ] = None,
    open_access: Annotated[
        bool,
        typer.Option(
            "--open",
            help="Run WITHOUT AUTH: no token, no API keys. Any user of this machine (any host that "
            "reaches --host) may create keys, deploy models, submit jobs and call every model.",
        ),
    ] = False,
    host: Annotated[
        str, typer.Option(help="Address the services listen on.", envvar="TUNELAB_HOST")
    ] = "127.0.0.1",
    port_base: Annotated[
        int | None,
        typer.Option(
            help="gRPC ports: datasets BASE, environments BASE+1, trainer +2, gateway +3 (default 50051…).",
            envvar="TUNELAB_PORT_BASE",
            show_default=False,
        ),
    ] = None,
    metrics_port_base: Annotated[
        int | None,
        typer.Option(
            help="Metrics ports likewise (default 9101…); 0 turns /metrics off.",
            envvar="TUNELAB_METRICS_PORT_BASE",
            show_default=False,
        ),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            help="The gateway's HTTP port (default 8000).", envvar="TUNELAB_HTTP_PORT", show_default=False
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each service to report SERVING.")
    ] = 60.0,
    foreground: Annotated[
        bool,
        typer.Option("--foreground", help="Stay attached, logs to this terminal; Ctrl-C stops the stack."),
    ] = False,
) -> None:
    """Start the embedded stack: every service as a local process, with a local object store.

    Already running services are left alone. Logs go to DATA_DIR/logs/SERVICE.log, pids to
    DATA_DIR/run/. One service's port can be moved with TUNELAB_SERVICE_PORT (e.g.
    TUNELAB_DATASETS_PORT=6000); variables such as TUNELAB_ALLOW_PRIVATE_ADDRESSES pass through.

    The services require the stack's token, kept in DATA_DIR/token (readable by you only); the CLI
    finds it there, so no --token is needed. The gateway's routes require an API key
    (`tunelab key create`). `--open` turns both off.

    Examples:

        tunelab up
        tunelab up --data-dir /srv/tunelab --port-base 60051 --http-port 8080 --foreground
    """
    from tunelab.cli import stack
    from tunelab.cli.stacktoken import stack_token, token_path

    config = ctx.obj.config
    where = _data_dir(ctx, data_dir)
    where.mkdir(parents=True, exist_ok=True)
    if open_access:
        if token:
            raise typer.BadParameter("--open runs without a token: leave out --token", param_hint="--open")
        stack_auth, new = "", False
        typer.echo(
            "WARNING: the stack runs WITHOUT AUTH (--open): anyone who can reach its ports may create API "
            "keys, deploy models, submit jobs and call every model.",
            err=True,
        )
    else:
        # A token named by flag, variable or config file; one found in a data dir is that stack's own.
        named = config.token if config.token and config.origin.get("token") != "local stack" else None
        stack_auth, new = stack_token(where, token if token is not None else named)
        if new:
            typer.echo(f"the stack's token is in {token_path(where)} (mode 600; the CLI reads it there)")
    opts = stack.StackOptions(
        data_dir=where,
        token=stack_auth,
        open_access=open_access,
        token_is_new=new,
        host=host,
        store_url=store_url,
        s3_endpoint=s3_endpoint,
        s3_access_key=s3_access_key,
        s3_secret_key=s3_secret_key,
        s3_secure=False if s3_insecure else None,
        port_base=port_base,
        metrics_port_base=metrics_port_base,
        http_port_value=http_port,
        start_timeout_s=timeout,
    )
    if foreground:
        raise typer.Exit(stack.run_foreground(opts, typer.echo))
    stack.up(opts, typer.echo)


@app.command()
def down(
    ctx: typer.Context,
    data_dir: DataDirOpt = None,
    grace: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")] = 20.0,
) -> None:
    """Stop the embedded stack started from the data dir.

    Example:

        tunelab down --data-dir /srv/tunelab
    """
    from tunelab.cli import stack

    stack.down(_data_dir(ctx, data_dir), typer.echo, grace_s=grace)


@app.command()
def status(
    ctx: typer.Context,
    data_dir: DataDirOpt = None,
    output: Annotated[Format, typer.Option("--output", "-o", help="table, json or yaml.")] = Format.table,
) -> None:
    """Show each service of the embedded stack: state, pid, address, gRPC health, log file.

    Exits 0 when every service is running and SERVING, 3 otherwise.

    Example:

        tunelab status -o json
    """
    from dataclasses import asdict

    from tunelab.cli import stack
    from tunelab.cli.output import render_rows

    rows = stack.status(_data_dir(ctx, data_dir), ctx.obj.config.token)
    render_rows([asdict(r) for r in rows], output)
    if not all(r.state == "running" and r.health == "SERVING" for r in rows):
        raise typer.Exit(3)


@app.command()
def version() -> None:
    """Print the version of the tunelab command line.

    Example:

        tunelab version
    """
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        typer.echo(f"tunelab {dist_version('tunelab-cli')}")
    except PackageNotFoundError:
        typer.echo("tunelab (not installed as a distribution)")


app.command("generate")(models.generate)
app.add_typer(configure.app, name="config")
app.command("agent")(agent.agent)


def main() -> None:
    app(prog_name="tunelab")
