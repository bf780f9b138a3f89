"""``tunelab env …``: Python environments built from a spec by the environments service.

Build logs stream to stderr while a command follows a build (stdout carries only results, so
``-o json`` stays parseable). gRPC errors are turned into messages by the root group in
``tunelab.cli.main``, not here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import unquote, urlsplit, urlunsplit

import typer

from tunelab.cli import completion as complete
from tunelab.cli.output import COLUMNS, Format, OutputOpt, age, fmt_of, human_bytes, state_name
from tunelab.common.errors import InvalidArgument, TunelabError

if TYPE_CHECKING:
    from tunelab.cli.clients.environments import EnvironmentClient
    from tunelab.environments.v1 import environments_pb2 as pb

app = typer.Typer(
    help="Python environments built from a spec (Python version, requirements, exclusions), cached by "
    "their resolved lock and pulled into a directory to run.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

NameArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="Environment name: lower-case letters, digits, '-'.",
        autocompletion=complete.environments,
    ),
]

COLUMNS.setdefault(
    "tunelab.environments.v1.Environment",
    [
        ("NAME", lambda e: e.name.removeprefix("environments/")),
        ("STATE", state_name),
        ("PYTHON", lambda e: e.resolved_python_version or e.spec.python_version),
        ("PACKAGES", lambda e: e.package_count),
        ("SIZE", lambda e: human_bytes(e.size_bytes) if e.size_bytes else "-"),
        ("KEY", lambda e: e.env_key[:12]),
        ("AGE", lambda e: age(e.create_time)),
        ("DETAIL", lambda e: e.error.splitlines()[0] if e.error else e.phase),
    ],
)


def _client(ctx: typer.Context) -> EnvironmentClient:
    from tunelab.cli.clients.environments import EnvironmentClient

    clients = ctx.obj
    clients.config.cache_dir.mkdir(parents=True, exist_ok=True)
    address = clients.config.address("environments")
    return EnvironmentClient(clients.channel("environments"), clients.config.cache_dir, address=address)


def _index(url: str) -> pb.PackageIndex:
    """``https://user:token@host/simple`` → an index whose credentials travel as secrets."""
    from tunelab.environments.v1 import environments_pb2 as pb

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument(f"{url!r}: give the http(s) URL of a simple index")
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return pb.PackageIndex(
        url=urlunsplit(parts._replace(netloc=netloc)),
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    return sys.stdin.read() if str(path) == "-" else path.read_text()


def _print_logs(lines: Iterable[pb.BuildLogLine]) -> None:
    for line in lines:
        print(f"[{line.phase}] {line.text}", file=sys.stderr, flush=True)


def _follow(client: EnvironmentClient, name: str, after_line: int = 0) -> pb.Environment:
    """Streams the build log to stderr until READY (returned) or FAILED (raised)."""
    env = None
    for resp in client.watch(name, after_line=after_line):
        _print_logs(resp.log_lines)
        env = resp.environment
    if env is None or state_name(env) not in ("READY", "FAILED"):
        raise TunelabError(f"the watch of {name} ended early; follow it with `tunelab env logs -f {name}`")
    if state_name(env) == "FAILED":
        raise TunelabError(f"environment {name} FAILED: {env.error or 'no reason given'}")
    return env


def _existing(client: EnvironmentClient, name: str) -> pb.Environment | None:
    import grpc

    try:
        return client.get(name)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return None
        raise


def _summary(env: pb.Environment, unchanged: bool = False) -> str:
    hit = " (cache hit)" if env.cache_hit else ""
    if unchanged:
        hit = " (unchanged: built earlier from this spec)"
    return (
        f"environment {env.name.removeprefix('environments/')} is {state_name(env)}{hit}: "
        f"Python {env.resolved_python_version}, {env.package_count} packages, {human_bytes(env.size_bytes)}, "
        f"key {env.env_key[:12]}"
    )


@app.command()
def create(
    ctx: typer.Context,
    name: NameArg,
    python: Annotated[
        str, typer.Option("--python", "-p", help="3.11 or 3.11.9 (default: the server's).")
    ] = "",
    requirements: Annotated[
        Path | None, typer.Option("--requirements", "-r", help="requirements.txt ('-' reads stdin).")
    ] = None,
    package: Annotated[
        list[str] | None, typer.Option("--package", "-P", help="A requirement line, repeatable.")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", help="Leave a package out (and what only it needs)."),
    ] = None,
    constraints: Annotated[Path | None, typer.Option("--constraints", "-c", help="constraints.txt.")] = None,
    index_url: Annotated[
        str,
        typer.Option(help="Replaces the default index; https://USER:TOKEN@host/simple for a private one."),
    ] = "",
    extra_index_url: Annotated[list[str] | None, typer.Option(help="Another index, repeatable.")] = None,
    system_site_packages: Annotated[
        bool, typer.Option("--system-site-packages", help="See the base image's packages (e.g. its torch).")
    ] = False,
    allow_unsafe: Annotated[
        bool, typer.Option("--allow-unsafe", help="Accept local paths, -e and index options in the text.")
    ] = False,
    torch_backend: Annotated[str, typer.Option(help="uv's --torch-backend, e.g. cpu or cu128.")] = "",
    platform: Annotated[str, typer.Option(help="Target platform, e.g. x86_64-manylinux_2_28.")] = "",
    exclude_newer: Annotated[str, typer.Option(help="Ignore uploads after this time (RFC 3339).")] = "",
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE, repeatable.")] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Rebuild an existing name with this spec.")
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return at once; follow with `env logs -f`.")
    ] = False,
    output: OutputOpt = None,
) -> None:
    """Create an environment and stream its build log until READY.

    The spec is resolved to a lock with hashes and the environment is keyed by that lock + Python +
    platform: the same spec again (or another spec resolving to the same lock) is a cache hit.

    Examples:

        tunelab env create chatglm3 --python 3.11 -r requirements.txt --exclude deepspeed --exclude mpi4py
        tunelab env create tools -P six -P 'idna>=3' --system-site-packages
    """
    from tunelab.cli.commands.sources import parse_labels
    from tunelab.cli.output import render
    from tunelab.environments.v1 import environments_pb2 as pb

    text = "\n".join([_read(requirements), *(package or [])]).strip() + "\n"
    spec = pb.EnvironmentSpec(
        python_version=python,
        requirements=text,
        exclude=exclude or [],
        extra_indexes=[_index(u) for u in extra_index_url or []],
        include_system_site_packages=system_site_packages,
        allow_unsafe_requirements=allow_unsafe,
        constraints=_read(constraints),
        torch_backend=torch_backend,
        platform=platform,
    )
    if index_url:
        spec.default_index.CopyFrom(_index(index_url))
    if exclude_newer:
        spec.exclude_newer.FromJsonString(
            exclude_newer if "T" in exclude_newer else f"{exclude_newer}T00:00:00Z"
        )
    client = _client(ctx)
    before = _existing(client, name)
    env = client.create(name, spec, description, parse_labels(label or []), replace)
    unchanged = before is not None and before.create_time == env.create_time
    if not no_wait and state_name(env) not in ("READY", "FAILED"):
        env = _follow(client, name)
    elif state_name(env) == "FAILED":
        raise TunelabError(f"environment {name} FAILED: {env.error}")
    if fmt_of(ctx, output) is Format.table:
        typer.echo(
            _summary(env, unchanged)
            if state_name(env) == "READY"
            else f"started {name}; `tunelab env logs -f {name}`"
        )
    else:
        render(env, fmt_of(ctx, output))


@app.command("ls")
def list_environments(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List environments, newest first.

    The list leaves out the requirements and constraints text, the lock and the layers; `tunelab
    env get NAME` shows them.

    Example:

        tunelab env ls -o json
    """
    from tunelab.cli.output import render

    render(list(_client(ctx).list()), fmt_of(ctx, output))


@app.command()
def get(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    """Show an environment with its spec, lock and stored layers (use -o yaml for everything).

    Example:

        tunelab env get chatglm3 -o yaml
    """
    from tunelab.cli.output import render

    render(_client(ctx).get(name), fmt_of(ctx, output))


@app.command()
def logs(
    ctx: typer.Context,
    name: NameArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until READY or FAILED.")
    ] = False,
    tail: Annotated[int, typer.Option(help="Only the last N lines (0: all).")] = 0,
) -> None:
    """Print an environment's build log (kept after FAILED).

    Example:

        tunelab env logs -f chatglm3
    """
    client = _client(ctx)
    lines = list(client.logs(name, tail=tail))
    _print_logs(lines)
    if follow:
        _follow(client, name, after_line=lines[-1].line_number if lines else 0)


@app.command()
def pull(
    ctx: typer.Context,
    name: NameArg,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="New, empty, or an earlier pull.")],
) -> None:
    """Materialize a READY environment into DIR (verified, cached by sha256); run DIR/bin/python.

    Example:

        tunelab env pull chatglm3 ./venv && ./venv/bin/python -c 'import peft'
    """
    from tunelab.cli.progress import transfer

    with transfer(f"pulling {name}") as progress:
        r = _client(ctx).pull(name, directory, progress)
    if r.unchanged:
        typer.echo(f"{directory} already holds {name} ({r.env_key[:12]})")
    else:
        typer.echo(
            f"pulled {name} into {directory}: {r.layers} layers, {human_bytes(r.bytes)} "
            f"({human_bytes(r.bytes_fetched)} downloaded) in {r.seconds:.1f}s; run {directory}/bin/python"
        )


@app.command("rm")
def remove(
    ctx: typer.Context,
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", help="Delete even while jobs hold leases.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an environment (and its stored build when no other environment shares it).

    Example:

        tunelab env rm chatglm3 --yes
    """
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Delete environment {name}?", abort=True)
    _client(ctx).delete(name, force)
    typer.echo(f"deleted environment {name}")


@app.command()
def gc(
    ctx: typer.Context,
    max_bytes: Annotated[int, typer.Option(help="Size budget of stored builds (0: the server's).")] = 0,
    min_idle: Annotated[float, typer.Option(help="Keep environments used in the last N seconds.")] = 0.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be deleted.")] = False,
    output: OutputOpt = None,
) -> None:
    """Delete least recently used environments without leases until the stored builds fit the budget.

    Example:

        tunelab env gc --max-bytes 20000000000 --dry-run
    """
    from tunelab.cli.output import render

    r = _client(ctx).gc(max_bytes, min_idle, dry_run)
    if fmt_of(ctx, output) is not Format.table:
        render(r, fmt_of(ctx, output))
        return
    verb = "would delete" if dry_run else "deleted"
    gone = ", ".join(n.removeprefix("environments/") for n in r.deleted_environments) or "nothing"
    typer.echo(
        f"{verb} {gone} ({human_bytes(r.bytes_freed)}); kept {r.environments_kept} "
        f"({human_bytes(r.bytes_kept)})"
    )
