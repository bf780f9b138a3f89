r"""``tunelab model …``, ``tunelab key …`` and ``tunelab generate``: model deployments on the
gateway, the API keys of its HTTP routes, and a generate request through it.

Model and adapter references: ``NAME[@VERSION]`` is a dataset version (``output@3``; latest READY
when no version), ``/path`` or ``./path`` a directory the upstream can read, ``path:ID`` a model
id vLLM already serves (``path:THUDM/chatglm3-6b``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tunelab.cli import completion as complete
from tunelab.cli.output import Format, OutputOpt, fmt_of

if TYPE_CHECKING:
    from tunelab.cli.clients.gateway import GatewayClient

app = typer.Typer(
    help="Model deployments on the gateway: deploy, list, show, remove.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
keys = typer.Typer(
    help="API keys for the gateway's HTTP routes.", no_args_is_help=True, rich_markup_mode="markdown"
)
NameArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="The deployment (see `tunelab model ls`).", autocompletion=complete.deployments
    ),
]

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url",
        help="The gateway's HTTP URL (default: the global --gateway-url: TUNELAB_GATEWAY_URL, the config "
        "file, the stack `tunelab up` runs, port 8000 of the gateway's host).",
        show_default=False,
    ),
]


def client(ctx: typer.Context, url: str = "", api_key: str = "") -> GatewayClient:
    from tunelab.cli.clients.gateway import GatewayClient

    clients = ctx.obj
    return GatewayClient(clients.channel("gateway"), url or clients.config.gateway_url, api_key)


def _show(ctx: typer.Context, items: Any, output: Format | None) -> None:
    from tunelab.cli.output import render, render_rows

    fmt = fmt_of(ctx, output)
    msgs: list[Any] = items if isinstance(items, list) else [items]
    if fmt is not Format.table:
        render(items, fmt)  # type: ignore[arg-type]
        return
    rows = []
    for d in msgs:
        state = d.State.Name(d.state).removeprefix("STATE_")
        healthy = sum(r.healthy for r in d.replica_statuses)
        upstream = d.upstream.WhichOneof("kind") or ""
        rows.append(
            {
                "name": d.name.removeprefix("deployments/"),
                "models": ", ".join(d.served_model_names),
                "state": state,
                "replicas": f"{healthy}/{len(d.replica_statuses)}",
                "upstream": upstream,
                "error": d.error[:120],
            }
        )
    render_rows(rows, fmt)
    if len(msgs) == 1 and not isinstance(items, list) and msgs[0].error:
        typer.echo(f"\n{msgs[0].error}")


@app.command()
def deploy(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="Deployment and model name: lower-case letters, digits and '-'.")
    ],
    base: Annotated[str, typer.Option("--base", "-b", help="Base model: NAME[@VERSION], /path, or path:ID.")],
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter", "-a", help="LoRA adapter [ALIAS=]REF[:SUBDIR], repeatable; the first is the default."
        ),
    ] = None,
    vllm: Annotated[
        list[str] | None, typer.Option("--vllm", help="Base URL of a vLLM server (a replica), repeatable.")
    ] = None,
    vllm_api_key: Annotated[
        str, typer.Option(envvar="VLLM_API_KEY", help="Key the vLLM servers expect.")
    ] = "",
    replicas: Annotated[int, typer.Option(help="Embedded engine processes (without --vllm).")] = 1,
    device: Annotated[str, typer.Option(help="Embedded engine device: cpu, cuda, cuda:1.")] = "",
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code",
            help="Let the embedded engine run the Python code shipped inside the base model's directory "
            "(auto_map in its config.json). That code runs with the engine's permissions on the gateway's "
            "host: use it only for a model repository you trust. Off by default: a base that ships code is "
            "refused without it. With --vllm it does not apply: start vLLM with its own --trust-remote-code. "
            "ChatGLM3 as THUDM ships it: import it with `tunelab model import` instead.",
        ),
    ] = False,
    max_in_flight: Annotated[
        int, typer.Option(help="Requests in flight before 429 (0: the gateway's default).")
    ] = 0,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return at once instead of waiting for READY.")
    ] = False,
    output: OutputOpt = None,
) -> None:
    """Deploy a base model with LoRA adapters on vLLM servers or the embedded engine.

    Waits until the deployment is READY (or FAILED, exit 1) unless --no-wait.

    Examples:

        tunelab model deploy chatglm3-ad --base chatglm3-6b --adapter output@3:checkpoint-3000
        tunelab model deploy chatglm3-ad --base path:THUDM/chatglm3-6b --adapter ad=output@3 --vllm http://vllm:8000
        tunelab model deploy my-model --base ./my-model --trust-remote-code   # runs ./my-model's own code
    """
    from tunelab.cli.clients.gateway import model_source
    from tunelab.gateway.v1 import gateway_pb2 as pb

    adapters = []
    for spec in adapter or []:
        alias, sep, ref = spec.partition("=")
        if not sep:
            alias, ref = "", spec
        ref, _, subdir = ref.partition(":") if not ref.startswith("path:") else (ref, "", "")
        alias = alias or ref.split("@")[0].split("/")[-1]
        adapters.append(pb.LoraAdapter(name=alias, source=model_source(ref, subdir)))
    if vllm and trust_remote_code:
        raise typer.BadParameter(
            "it is for the embedded engine; a vLLM server runs remote code only when it was started with "
            "vLLM's own --trust-remote-code",
            param_hint="--trust-remote-code",
        )
    if vllm:
        upstream = pb.Upstream(vllm=pb.VllmUpstream(base_urls=vllm, api_key=vllm_api_key))
    else:
        upstream = pb.Upstream(
            embedded=pb.EmbeddedUpstream(device=device, trust_remote_code=trust_remote_code)
        )
    dep = pb.Deployment(
        model_name=name,
        base_model=model_source(base),
        adapters=adapters,
        upstream=upstream,
        default_adapter=adapters[0].name if adapters else "",
        replicas=replicas,
        max_in_flight=max_in_flight,
    )
    c = client(ctx)
    d = c.deploy(name, dep)
    if not no_wait:
        typer.echo(f"deploying {name}…", err=True)
        d = c.wait_loaded(name)
    _show(ctx, d, output)
    if d.state == pb.Deployment.STATE_FAILED:
        raise typer.Exit(1)


@app.command("ls")
def list_(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List deployments.

    Example:

        tunelab model ls -o json
    """
    _show(ctx, list(client(ctx).list()), output)


@app.command()
def get(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    """Show one deployment, with why it is not READY.

    Example:

        tunelab model get chatglm3-ad -o yaml
    """
    _show(ctx, client(ctx).get(name), output)


@app.command()
def rm(ctx: typer.Context, name: NameArg) -> None:
    """Remove a deployment (in-flight requests finish first).

    Example:

        tunelab model rm chatglm3-ad
    """
    client(ctx).delete(name)
    typer.echo(f"removed {name}")


def generate(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="A served model name (`tunelab model ls`).")],
    prompt: Annotated[str, typer.Argument(help="The text_input.")],
    stream: Annotated[
        bool, typer.Option("--stream", help="Print tokens as they come (generate_stream).")
    ] = False,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option()] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.95,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="More sampling KEY=VALUE.")] = None,
    url: UrlOpt = "",
    api_key: Annotated[
        str, typer.Option(envvar="TUNELAB_API_KEY", help="A key from `tunelab key create`.")
    ] = "",
) -> None:
    """Send a Triton generate request through the gateway and print the text.

    It is the seed's `POST /v2/models/NAME/generate` (`/generate_stream` with --stream).

    Examples:

        tunelab generate chatglm3-ad "类型#上衣*颜色#黑色"
        tunelab generate chatglm3-ad "hi" --stream --max-tokens 64
    """
    from tunelab.cli.clients.gateway import parse_sampling

    sampling = {
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        **parse_sampling(param or []),
    }
    for text in client(ctx, url, api_key or os.environ.get("TUNELAB_API_KEY", "")).generate(
        model, prompt, sampling, stream
    ):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")


@keys.command("create")
def key_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Key name (lower-case letters, digits, '-').")] = "",
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only these models; repeatable.")
    ] = None,
    display_name: Annotated[str, typer.Option(help="A note about who uses it.")] = "",
) -> None:
    """Create an API key; its secret is printed once (on stdout, the rest on stderr).

    Example:

        tunelab key create ci --model chatglm3-ad
    """
    key, secret = client(ctx).create_key(name, display_name, model)
    typer.echo(f"created {key.name}; its secret (shown only now):", err=True)
    typer.echo(secret)


@keys.command("ls")
def key_ls(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List API keys (never their secrets).

    Example:

        tunelab key ls -o json
    """
    from tunelab.cli.output import render

    render(client(ctx).list_keys(), fmt_of(ctx, output))


@keys.command("rm")
def key_rm(
    ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME", help="The key's name.")]
) -> None:
    """Revoke an API key at once.

    Example:

        tunelab key rm ci
    """
    client(ctx).delete_key(name)
    typer.echo(f"revoked {name}")
