"""``tunelab queue …``: queues with quotas (GPUs, concurrent jobs), and the executor's capacity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.cli.commands.jobs import client
from tunelab.cli.output import Format, OutputOpt, fmt_of

if TYPE_CHECKING:
    from tunelab.trainer.v1 import trainer_pb2 as pb

app = typer.Typer(
    help="Queues: jobs wait in one until its quotas and the free GPUs let them start.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Queue name.")]
GpuOpt = Annotated[int | None, typer.Option(help="GPUs the queue's running jobs may hold together.")]
JobsOpt = Annotated[int | None, typer.Option(help="Jobs of the queue that may run at once.")]
CpuOpt = Annotated[str | None, typer.Option(help="CPU quota, e.g. 32 or 500m.")]
MemOpt = Annotated[str | None, typer.Option(help="Memory quota, e.g. 128Gi.")]


def _queue(
    name: str, description: str | None, gpu: int | None, jobs: int | None, cpu: str | None, mem: str | None
) -> tuple[pb.Queue, list[str]]:
    from tunelab.cli.commands.jobspec import cpu_millis, memory_bytes
    from tunelab.trainer.v1 import trainer_pb2 as pb

    q = pb.Queue(name=f"queues/{name}")
    fields: list[str] = []
    if description is not None:
        q.description, fields = description, [*fields, "description"]
    for field, value in (
        ("gpu_quota", gpu),
        ("max_concurrent_jobs", jobs),
        ("cpu_quota_millis", cpu_millis(cpu, "--cpu-quota") if cpu else None),
        ("memory_quota_bytes", memory_bytes(mem, "--memory-quota") if mem else None),
    ):
        if value is not None:
            setattr(q, field, value)
            fields.append(field)
    return q, fields


@app.command()
def create(
    ctx: typer.Context,
    name: NameArg,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    gpu_quota: GpuOpt = None,
    max_concurrent_jobs: JobsOpt = None,
    cpu_quota: CpuOpt = None,
    memory_quota: MemOpt = None,
    output: OutputOpt = None,
) -> None:
    """Create a queue.

    Example:

        tunelab queue create research --gpu-quota 4 --max-concurrent-jobs 2
    """
    from tunelab.cli.jobview import render

    q, _ = _queue(name, description, gpu_quota, max_concurrent_jobs, cpu_quota, memory_quota)
    render(client(ctx).create_queue(name, q), fmt_of(ctx, output))


@app.command("ls")
def list_queues(ctx: typer.Context, output: OutputOpt = None) -> None:
    """List queues with their quotas and what they hold now.

    Example:

        tunelab queue ls
    """
    from tunelab.cli.jobview import render

    render(client(ctx).list_queues(), fmt_of(ctx, output))


@app.command()
def get(ctx: typer.Context, name: NameArg, output: OutputOpt = None) -> None:
    """Show a queue.

    Example:

        tunelab queue get default -o yaml
    """
    from tunelab.cli.jobview import render

    render(client(ctx).get_queue(name), fmt_of(ctx, output))


@app.command()
def update(
    ctx: typer.Context,
    name: NameArg,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    gpu_quota: GpuOpt = None,
    max_concurrent_jobs: JobsOpt = None,
    cpu_quota: CpuOpt = None,
    memory_quota: MemOpt = None,
    pause: Annotated[
        bool | None, typer.Option("--pause/--resume", help="Stop or resume starting jobs.")
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Change a queue's quotas, description or state. Lowering a quota never stops running jobs.

    Example:

        tunelab queue update default --gpu-quota 8
    """
    from tunelab.cli.jobview import render
    from tunelab.trainer.v1 import trainer_pb2 as pb

    q, fields = _queue(name, description, gpu_quota, max_concurrent_jobs, cpu_quota, memory_quota)
    if pause is not None:
        q.state = pb.Queue.STATE_PAUSED if pause else pb.Queue.STATE_OPEN
        fields.append("state")
    if not fields:
        raise typer.BadParameter("nothing to change: give a quota, --description, --pause or --resume")
    render(client(ctx).update_queue(q, fields), fmt_of(ctx, output))


@app.command("rm")
@app.command("delete", hidden=True)  # the name it had first; `rm` as for every other resource
def delete(ctx: typer.Context, name: NameArg) -> None:
    """Delete a queue.

    A queue that still holds unfinished jobs is refused, and so is the default queue.

    Examples:

        tunelab queue rm research
        tunelab queue delete research      # delete: another name for rm
    """
    client(ctx).delete_queue(name)
    typer.echo(f"deleted queue {name}")


@app.command()
def capacity(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Show what the executor can schedule: GPUs (and the jobs on them), CPU, memory.

    Example:

        tunelab queue capacity
    """
    from tunelab.cli.jobview import render
    from tunelab.cli.output import human_bytes, table_out

    cap = client(ctx).capacity()
    if fmt_of(ctx, output) is not Format.table:
        render(cap, fmt_of(ctx, output))
        return
    typer.echo(
        f"{cap.executor} executor: {cap.free_gpus}/{cap.total_gpus} GPUs free, "
        f"{cap.cpu_millis / 1000:g} CPUs, {human_bytes(cap.memory_bytes)} memory"
    )
    if cap.gpus:
        rows = [[g.index, g.model or "-", human_bytes(g.memory_bytes), g.job or "-"] for g in cap.gpus]
        table_out(["GPU", "MODEL", "MEMORY", "JOB"], rows)
