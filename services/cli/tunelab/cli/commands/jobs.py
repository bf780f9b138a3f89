"""``tunelab job …``: queued training jobs on the trainer service.

``submit`` takes the flags of the seed's ``baizectl job submit`` with the same meaning. gRPC
errors are turned into messages by the root group in ``tunelab.cli.main``, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.cli import completion as complete
from tunelab.cli.output import Format, OutputOpt, fmt_of

if TYPE_CHECKING:
    from tunelab.cli.clients.trainer import TrainerClient
    from tunelab.trainer.v1 import trainer_pb2 as pb

app = typer.Typer(
    help="Training jobs: submit a command to a queue, follow it, read its logs and metrics.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

NameArg = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="The job's name (see `tunelab job ls`).", autocompletion=complete.jobs
    ),
]
STATES = ("QUEUED", "STARTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED")


def client(ctx: typer.Context) -> TrainerClient:
    from tunelab.cli.clients.trainer import TrainerClient

    clients = ctx.obj
    return TrainerClient(clients.channel("trainer"), address=clients.config.address("trainer"))


def _show(ctx: typer.Context, output: Format | None, job: pb.Job, line: str) -> None:
    from tunelab.cli.jobview import render

    fmt = fmt_of(ctx, output)
    if fmt is Format.table:
        typer.echo(line)
    else:
        render(job, fmt)


def _finish(job: pb.Job | None, name: str) -> None:
    from tunelab.cli.jobview import job_state
    from tunelab.common.errors import TunelabError

    if job is None:
        raise TunelabError(
            f"the watch of {name} ended early; follow it again with `tunelab job watch {name}`"
        )
    state = job_state(job)
    if state != "SUCCEEDED":
        raise TunelabError(f"job {name} {state}: {job.reason} {job.message}".rstrip())


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    ctx: typer.Context,
    command: Annotated[
        list[str], typer.Argument(metavar="-- COMMAND...", help="The command and its arguments.")
    ],
    name: Annotated[
        str,
        typer.Option(
            "--name",
            help="Job name (letters, digits, '-'; read as lower-case, e.g. FineTune-X is finetune-x); "
            "default: generated.",
        ),
    ] = "",
    job_type: Annotated[
        str, typer.Option("--type", "-t", help="PYTORCH (the only type so far).")
    ] = "PYTORCH",
    image: Annotated[
        str,
        typer.Option(
            help="Container image: Kubernetes runs the job in it; the local executor runs no images "
            "and says so at submit and in the job's log."
        ),
    ] = "",
    priority: Annotated[
        str, typer.Option(help="high, medium or low (100000/10000/1000, Kueue classes), or a number.")
    ] = "",
    resources: Annotated[
        list[str] | None,
        typer.Option(
            help="Per worker: cpu=8,memory=16Gi,nvidia.com/gpu=1. Checked against the executor's capacity at "
            "submit; enforced locally with cgroups where the OS allows (the job's log says which)."
        ),
    ] = None,
    requests_resources: Annotated[
        list[str] | None, typer.Option(help="Requests when lower than --resources (limits).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Workers; >1 runs the command under torchrun.")] = 1,
    queue: Annotated[str, typer.Option(help="Queue (see `tunelab queue ls`); default: default.")] = "",
    working_dir: Annotated[
        str,
        typer.Option(
            help="Absolute directory to run in, e.g. /home/jovyan/ChatGLM3; it and the mounts exist for the "
            "job only (nothing is created on the host). Default: one per job."
        ),
    ] = "",
    datasets: Annotated[
        list[str] | None,
        typer.Option(
            "--datasets",
            "-d",
            help="NAME[@VERSION]:PATH[:ro|:rw], repeatable; names in any case (AdvertiseGen is "
            "advertisegen). PATH is absolute or relative to --working-dir; mounts may nest (code at "
            "the working dir, data inside it). An `empty`-source dataset is an output unless :ro (e.g. "
            "an imported model); others are inputs. Also from TUNELAB_DATASETS (a notebook's mounts).",
        ),
    ] = None,
    env: Annotated[
        str,
        typer.Option(
            "--env",
            "--runtime-env",
            help="Environment (`tunelab env ls`).",
            autocompletion=complete.environments,
        ),
    ] = "",
    envs: Annotated[list[str] | None, typer.Option("--envs", "-e", help="KEY=VALUE variables.")] = None,
    labels: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    annotations: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    restart_policy: Annotated[str, typer.Option(help="never, on-failure or always.")] = "on-failure",
    backoff_limit: Annotated[
        int | None, typer.Option("--backoff-limit", "--max-retries", help="Retries before FAILED.")
    ] = None,
    max_run_duration: Annotated[float, typer.Option(help="Seconds an attempt may run; 0: no limit.")] = 0,
    output_commit_interval: Annotated[
        float, typer.Option(help="Seconds between output commits while running; 0: the server's.")
    ] = 0,
    cancel_grace: Annotated[
        float | None, typer.Option(help="Seconds from SIGTERM to SIGKILL on cancel (default: the server's).")
    ] = None,
    shm_size: Annotated[int, typer.Option(help="MiB of /dev/shm (container executors).")] = 0,
    server: Annotated[
        bool,
        typer.Option(
            "--server",
            help="A server (e.g. `vllm serve … --port $PORT`): it runs until cancelled, is restarted "
            "whenever it exits (up to --backoff-limit times), and `tunelab job get` shows its endpoint.",
        ),
    ] = False,
    port: Annotated[
        int, typer.Option(help="--server: the port it listens on, also $PORT; 0: the executor picks.")
    ] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything, submit nothing.")] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", "--watch", "-w", help="Follow the job until it ends, as `tunelab job watch`."
        ),
    ] = False,
    output: OutputOpt = None,
) -> None:
    r"""Submit a job: it waits in its queue (by priority, then submission time) until it can start.

    Example (the seed's `baizectl job submit`, as written; from its notebook, TUNELAB_DATASETS
    adds the code dataset at the working dir: ChatGLM3:/home/jovyan/ChatGLM3):

        tunelab job submit --name finetunel-chatglm3 -t PYTORCH \
          --image release.daocloud.io/baize/baize-notebook:v0.5.0 --priority baize-high-priority \
          --resources cpu=8,memory=16Gi,nvidia.com/gpu=1 --workers 1 --queue default \
          --working-dir /home/jovyan/ChatGLM3 \
          --datasets AdvertiseGen:/home/jovyan/ChatGLM3/finetune_demo/data/AdvertiseGen \
          --datasets output:/home/jovyan/ChatGLM3/finetune_demo/output \
          --labels job_type=pytorch --restart-policy on-failure \
          -- bash -c "cd /home/jovyan/ChatGLM3/finetune_demo && python finetune_hf.py \
          data/AdvertiseGen_fix ./chatglm3-6b configs/lora.yaml"

    With --follow it shows the job's progress (step, loss, tokens/s, ETA) until it ends and exits 0
    when it SUCCEEDED, 1 otherwise.
    """
    import os

    from tunelab.cli.commands.jobspec import (
        CONTEXT_DATASETS,
        SubmitFlags,
        build_spec,
        context_datasets,
        job_id,
    )
    from tunelab.cli.jobview import follow_job, job_state, short

    inherited = context_datasets(datasets or [], dict(os.environ))
    if inherited:
        typer.echo(f"mounting the notebook's datasets ({CONTEXT_DATASETS}): {' '.join(inherited)}", err=True)
    flags = SubmitFlags(
        name, job_type, image, priority, resources or [], requests_resources or [], workers, queue,
        working_dir, [*inherited, *(datasets or [])], env, envs or [], labels or [], annotations or [],
        restart_policy,
        backoff_limit, max_run_duration, output_commit_interval, cancel_grace, shm_size, command,
        server=server, port=port,
    )  # fmt: skip
    spec = build_spec(flags)
    trainer = client(ctx)
    job = trainer.submit(spec, job_id(name), validate_only=dry_run)
    if spec.image and job.executor == "local":
        note = f"--image {spec.image} is recorded, not used"
        typer.echo(f"note: the local executor runs commands on this host; {note}", err=True)
    verb = "would submit" if dry_run else "submitted"
    line = f"{verb} job {short(job.name)} ({job_state(job)}, priority {job.spec.priority})"
    if not dry_run and not follow:
        line += f"; follow it with `tunelab job watch {short(job.name)}`"
    if follow and not dry_run:
        typer.echo(line)
        job = follow_job(trainer.watch(job.name)) or job
        _finish(job, short(job.name))
        return
    _show(ctx, output, job, line)


@app.command("ls")
def list_jobs(
    ctx: typer.Context,
    queue: Annotated[str, typer.Option(help="Only this queue's jobs.")] = "",
    state: Annotated[
        list[str] | None, typer.Option("--state", "-s", help=f"Only these: {', '.join(STATES)}.")
    ] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE, repeatable.")] = None,
    output: OutputOpt = None,
) -> None:
    """List jobs, newest first.

    Example:

        tunelab job ls --state RUNNING --state QUEUED
    """
    from tunelab.cli.commands.jobspec import parse_pairs
    from tunelab.cli.jobview import render
    from tunelab.trainer.v1 import trainer_pb2 as pb

    states = []
    for s in state or []:
        if s.upper() not in STATES:
            raise typer.BadParameter(f"{s!r}: use one of {', '.join(STATES)}", param_hint="'--state'")
        states.append(getattr(pb.Job, f"STATE_{s.upper()}"))
    jobs = list(client(ctx).list(queue, states, parse_pairs(label or [], "--label")))
    render(jobs, fmt_of(ctx, output))


@app.command()
def get(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    """Show a job: state and why, resources, datasets, latest metrics, attempts.

    Example:

        tunelab job get finetune-chatglm3 -o yaml
    """
    from tunelab.cli.jobview import describe, render

    job = client(ctx).get(name)
    if fmt_of(ctx, output) is Format.table:
        typer.echo(describe(job))
    else:
        render(job, fmt_of(ctx, output))


@app.command()
def logs(
    ctx: typer.Context,
    name: NameArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    tail: Annotated[int, typer.Option(help="Start with the last N lines; 0: all.")] = 0,
    attempt: Annotated[int | None, typer.Option(help="Only this attempt's lines.")] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", help="Prefix each line with its time.")] = False,
) -> None:
    """Print a job's output (stdout, stderr and the agent's lines), stored by the trainer.

    Example:

        tunelab job logs finetune-chatglm3 -f --tail 50
    """
    import sys

    from tunelab.trainer.v1 import trainer_pb2 as pb

    for line in client(ctx).logs(name, follow=follow, tail=tail, attempt=attempt):
        prefix = line.time.ToDatetime().isoformat(timespec="milliseconds") + "Z " if timestamps else ""
        if line.stream == pb.LogLine.STREAM_AGENT:
            prefix += "[agent] "
        sys.stdout.write(f"{prefix}{line.text}\n")
        sys.stdout.flush()


@app.command()
def watch(ctx: typer.Context, name: NameArg) -> None:
    """Follow a job until it ends: state, phase, and a progress bar with step, loss, tokens/s and ETA.

    Exits 0 when it SUCCEEDED, 1 otherwise.

    Example:

        tunelab job watch finetune-chatglm3
    """
    from tunelab.cli.jobview import follow_job

    _finish(follow_job(client(ctx).watch(name)), name)


@app.command()
def metrics(
    ctx: typer.Context,
    name: NameArg,
    attempt: Annotated[int | None, typer.Option(help="Only this attempt's points.")] = None,
    eval_only: Annotated[bool, typer.Option("--eval", help="Only points with evaluation scores.")] = False,
    output: OutputOpt = None,
) -> None:
    """List the metric points a job reported (step, loss, learning rate, tokens/s, evaluation).

    Example:

        tunelab job metrics finetune-chatglm3 --eval
    """
    from tunelab.cli.jobview import render

    render(list(client(ctx).metrics(name, attempt, eval_only=eval_only)), fmt_of(ctx, output))


@app.command()
def cancel(
    ctx: typer.Context,
    name: NameArg,
    grace: Annotated[float | None, typer.Option(help="Seconds from SIGTERM to SIGKILL.")] = None,
    output: OutputOpt = None,
) -> None:
    """Cancel a job: a queued one at once, a running one by SIGTERM, then SIGKILL after the grace period.

    Example:

        tunelab job cancel finetune-chatglm3
    """
    from tunelab.cli.jobview import job_state

    job = client(ctx).cancel(name, grace)
    _show(ctx, output, job, f"job {name} is {job_state(job)}")


@app.command()
def restart(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    """Run a finished job again; outputs start from their last commit (a recipe resumes from its checkpoint).

    Example:

        tunelab job restart finetune-chatglm3
    """
    from tunelab.cli.jobview import job_state

    job = client(ctx).restart(name)
    _show(ctx, output, job, f"job {name} is {job_state(job)} again (attempt {job.attempt + 1} next)")


@app.command("rm")
@app.command("delete", hidden=True)  # the name it had first; `rm` as for every other resource
def delete(
    ctx: typer.Context,
    names: Annotated[
        list[str], typer.Argument(metavar="NAME...", help="Jobs to delete.", autocompletion=complete.jobs)
    ],
    force: Annotated[bool, typer.Option("--force", help="Kill unfinished jobs first.")] = False,
) -> None:
    """Delete finished jobs with their logs and metrics (committed outputs stay in their datasets).

    An unfinished job is refused unless --force, which kills it first.

    Examples:

        tunelab job rm finetune-chatglm3
        tunelab job delete finetune-chatglm3 --force      # delete: another name for rm
    """
    trainer = client(ctx)
    for name in names:
        trainer.delete(name, force)
        typer.echo(f"deleted job {name}")
