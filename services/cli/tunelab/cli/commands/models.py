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
    from tunelab.gateway.v1 import gateway_pb2 as pb

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
        if upstream == "workload":
            runtime = pb.WorkloadUpstream.Runtime.Name(d.upstream.workload.runtime)
            upstream = f"{runtime.removeprefix('RUNTIME_').lower()} (trainer jobs)"
        row = {
            "name": d.name.removeprefix("deployments/"),
            "models": ", ".join(d.served_model_names),
            "state": state,
            "replicas": f"{healthy}/{len(d.replica_statuses)}",
            "upstream": upstream,
        }
        if any(r.restarts for m in msgs for r in m.replica_statuses):
            row["restarts"] = str(sum(r.restarts for r in d.replica_statuses))
        if any(r.job for m in msgs for r in m.replica_statuses):
            row["jobs"] = ", ".join(r.job.removeprefix("jobs/") for r in d.replica_statuses if r.job)
        rows.append({**row, "error": d.error[:120]})
    render_rows(rows, fmt)
    if len(msgs) == 1 and not isinstance(items, list):
        _replicas(msgs[0])
        if msgs[0].error:
            typer.echo(f"\n{msgs[0].error}")


def _replicas(d: Any) -> None:
    """One line per replica of one deployment: its job, address, health or why not, and how often
    it was restarted and why last."""
    if not any(r.job or r.restarts for r in d.replica_statuses):
        return
    typer.echo("")
    for i, r in enumerate(d.replica_statuses):
        health = "healthy" if r.healthy else (r.error or "not healthy")
        job = f"{r.job.removeprefix('jobs/')} " if r.job else ""
        last = f"; last: {r.restart_reason}" if r.restart_reason else ""
        restarts = f" (restarts: {r.restarts}{last})" if r.restarts else ""
        typer.echo(f"replica {i}: {job}{r.url or '(no address yet)'}: {health}{restarts}")


@app.command()
def deploy(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="Deployment and model name: lower-case letters, digits and '-'.")
    ],
    base: Annotated[
        str,
        typer.Option(
            "--base", "-b", help="Base model: DATASET[@VERSION][:FOLDER], /path, or path:ID (a model id)."
        ),
    ],
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter", "-a", help="LoRA adapter [ALIAS=]REF[:FOLDER], repeatable; the first is the default."
        ),
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="engine (default): tunelab's embedded engine. vllm: vLLM, run by the trainer (or the "
            "servers given with --vllm).",
            show_default=False,
        ),
    ] = "",
    workload: Annotated[
        bool,
        typer.Option(
            "--workload", help="With --runtime engine: the trainer runs the engine as a job, not the gateway."
        ),
    ] = False,
    vllm: Annotated[
        list[str] | None,
        typer.Option(
            "--vllm", help="Base URL of a vLLM server already running (a replica), repeatable; implies vllm."
        ),
    ] = None,
    vllm_api_key: Annotated[
        str, typer.Option(envvar="VLLM_API_KEY", help="Key the --vllm servers expect.")
    ] = "",
    replicas: Annotated[
        int, typer.Option(help="Servers to run: engine processes, or trainer jobs (not with --vllm).")
    ] = 1,
    device: Annotated[str, typer.Option(help="Engine the gateway starts: cpu, cuda, cuda:1.")] = "",
    gpus: Annotated[
        int | None,
        typer.Option(
            help="Trainer jobs: GPUs per replica (vLLM's --tensor-parallel-size follows); default: 1 for "
            "vLLM, none for the engine.",
            show_default=False,
        ),
    ] = None,
    cpu: Annotated[str, typer.Option(help="Trainer jobs: CPU per replica, e.g. 8 or 500m.")] = "",
    memory: Annotated[str, typer.Option(help="Trainer jobs: memory per replica, e.g. 32Gi.")] = "",
    resources: Annotated[
        list[str] | None,
        typer.Option(help="Trainer jobs, as `job submit` takes them: cpu=8,memory=32Gi,nvidia.com/gpu=1."),
    ] = None,
    env: Annotated[
        str,
        typer.Option(
            "--env", help="Trainer jobs: the environment to run in (`tunelab env ls`), with vLLM installed."
        ),
    ] = "",
    image: Annotated[str, typer.Option(help="Trainer jobs: container image (Kubernetes executor).")] = "",
    queue: Annotated[str, typer.Option(help="Trainer jobs: the queue; default: default.")] = "",
    priority: Annotated[
        str, typer.Option(help="Trainer jobs: priority class; default: high (serving before training).")
    ] = "",
    runtime_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--runtime-arg",
            help="Trainer jobs: an extra argument for the server's command line, repeatable, e.g. "
            "--runtime-arg=--max-model-len --runtime-arg=8192.",
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code",
            help="Let the server tunelab starts run the Python code shipped inside the base model's "
            "directory (auto_map in its config.json): the embedded engine's or vLLM's --trust-remote-code. "
            "That code runs with the server's permissions: use it only for a model repository you trust. "
            "Off by default: a base that ships code is refused without it. With --vllm it does not apply: "
            "start vLLM with its own --trust-remote-code. ChatGLM3 as THUDM ships it: import it with "
            "`tunelab model import` instead.",
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
    """Deploy a base model with LoRA adapters behind the gateway. Three ways to serve it, by who
    starts the server:

    * **The gateway starts the embedded engine** (the default, `--runtime engine`): a small
      transformers + peft server next to the gateway, on its machine; for CPUs and small models.

    * **The trainer runs the server as a job**, one job per replica (`--runtime vllm`, or
      `--runtime engine --workload`): queued like training jobs (--queue, --priority high by default,
      --gpus, --cpu, --memory or --resources), with the base and adapters mounted read-only, restarted
      when it exits, cancelled by `tunelab model rm`. For vLLM tunelab writes the command line itself,
      `vllm serve BASE --served-model-name NAME --enable-lora --max-lora-rank R --max-loras N
      --lora-modules ADAPTER=PATH ... --tensor-parallel-size GPUS` with
      VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (runtime adapter loading); `vllm` must be installed in
      --env (or the --image). More flags: --runtime-arg. `tunelab job logs dep-NAME-0` shows its output.

    * **A vLLM server you started** (`--vllm URL`, one per replica; the compose stack's vLLM): the
      gateway only routes to it and loads the adapters into it. Start it with LoRA and runtime
      adapter loading on, and where it sees the gateway's model folder (the compose stack shares it):
      `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE --served-model-name NAME --enable-lora
      --max-lora-rank 64`.

    Waits until the deployment is READY (or FAILED, exit 1) unless --no-wait.

    Examples:

        tunelab model deploy chatglm3-ad --base chatglm3-6b --adapter output@3:checkpoint-3000
        tunelab model deploy chatglm3-ad --base chatglm3-6b --adapter output@3 --runtime vllm --env vllm
        tunelab model deploy tiny --base tiny-model --runtime engine --workload --cpu 2 --memory 4Gi
        tunelab model deploy chatglm3-ad --base path:THUDM/chatglm3-6b --adapter ad=output@3 --vllm http://vllm:8000
        tunelab model deploy my-model --base ./my-model --trust-remote-code   # runs ./my-model's own code
    """
    from tunelab.cli.clients.gateway import model_ref
    from tunelab.cli.commands.deployspec import UpstreamFlags, build_upstream
    from tunelab.gateway.v1 import gateway_pb2 as pb

    adapters = []
    for spec in adapter or []:
        alias, sep, ref = spec.partition("=")
        if not sep:
            alias, ref = "", spec
        source = model_ref(ref)
        where = source.dataset_version.split("/")[1] if source.dataset_version else source.path
        adapters.append(pb.LoraAdapter(name=alias or where.rstrip("/").split("/")[-1], source=source))
    upstream = build_upstream(
        UpstreamFlags(
            runtime=runtime,
            workload=workload,
            vllm=vllm or [],
            vllm_api_key=vllm_api_key,
            device=device,
            trust_remote_code=trust_remote_code,
            gpus=gpus,
            cpu=cpu,
            memory=memory,
            resources=resources or [],
            env=env,
            image=image,
            queue=queue,
            priority=priority,
            runtime_args=runtime_arg or [],
        )
    )
    dep = pb.Deployment(
        model_name=name,
        base_model=model_ref(base),
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
