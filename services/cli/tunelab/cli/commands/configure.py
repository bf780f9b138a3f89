"""``tunelab config …``: where the CLI finds the services, and the config file that says so.

Each setting is resolved on its own: flag, then ``TUNELAB_*`` variable, then the config file
(``--config``, ``$TUNELAB_CONFIG`` or ``~/.config/tunelab/config.yaml``), then the stack
``tunelab up`` runs, then a default. ``show`` prints the result with where each value came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.output import Format, OutputOpt

app = typer.Typer(
    help="The CLI's settings: service addresses, the gateway URL, the token, the output format.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _masked(token: str) -> str:
    return "" if not token else "****" + (token[-4:] if len(token) > 11 else "")


@app.command()
def show(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Show every setting, its value and where it came from (flag, env, file, local stack, default).

    The token is masked.

    Example:

        tunelab config show -o yaml
    """
    from tunelab.cli.config import ENV_VARS
    from tunelab.cli.output import render_rows

    config = ctx.obj.config
    values = {
        **{f"{svc}_addr": addr for svc, addr in config.addresses.items()},
        "gateway_url": config.gateway_url,
        "token": _masked(config.token),
        "data_dir": str(config.data_dir),
        "cache_dir": str(config.cache_dir),
        "output": config.output,
    }
    rows = [
        {
            "setting": key,
            "value": values.get(key, ""),
            "from": config.origin.get(key, "default"),
            "env": ENV_VARS[key],
        }
        for key in ENV_VARS
    ]
    render_rows(rows, output or Format(config.output))
    if (output or Format(config.output)) is Format.table:
        exists = "" if config.path and config.path.is_file() else " (does not exist)"
        typer.echo(f"\nconfig file: {config.path}{exists}")


@app.command("set")
def set_(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="A setting, e.g. trainer_addr (see `tunelab config show`).")],
    value: Annotated[str, typer.Argument(help="Its value; an empty string removes it from the file.")],
) -> None:
    """Write one setting into the config file (created with mode 600: it may hold the token).

    Examples:

        tunelab config set trainer_addr gpu-box:50053
        tunelab config set gateway_url http://gpu-box:8000
        tunelab config set token ""
    """
    import yaml

    from tunelab.cli.config import ENV_VARS, read_config_file
    from tunelab.common.errors import InvalidArgument

    if key not in ENV_VARS:
        raise InvalidArgument(f"unknown setting {key!r}; known: {', '.join(ENV_VARS)}")
    path: Path = ctx.obj.config.path
    data: dict[str, str] = read_config_file(path)
    if value:
        data[key] = value
    else:
        data.pop(key, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False) if data else "")
    tmp.chmod(0o600)
    tmp.replace(path)
    shown = _masked(value) if key == "token" else value
    typer.echo(f"{path}: {key} = {shown}" if value else f"{path}: removed {key}")
