"""``tunelab agent``: the job agent, started by the trainer's executor where a job runs."""

from __future__ import annotations

from typing import Annotated

import typer


def agent(
    ctx: typer.Context,
    job: Annotated[str, typer.Option("--job", help="jobs/NAME")],
    attempt: Annotated[int, typer.Option("--attempt", help="The attempt to run (1-based).")],
    worker: Annotated[int, typer.Option("--worker", help="The worker index (0-based).")] = 0,
) -> None:
    """Run one worker of a job attempt: materialize datasets and environment, run the command,
    stream logs and metrics to the trainer, commit outputs. Started by executors, not by hand.

    The services are found as for every command (TUNELAB_TRAINER_ADDR, TUNELAB_DATASETS_ADDR,
    TUNELAB_ENVIRONMENTS_ADDR, TUNELAB_TOKEN, TUNELAB_CACHE_DIR), which the executor sets.
    """
    from tunelab.cli.agent.run import Agent
    from tunelab.cli.clients.environments import EnvironmentClient
    from tunelab.cli.clients.trainer import TrainerClient

    clients = ctx.obj
    config = clients.config
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    trainer = TrainerClient(clients.channel("trainer"), address=config.address("trainer"))

    def environments() -> EnvironmentClient:
        channel = clients.channel("environments")
        return EnvironmentClient(channel, config.cache_dir, address=config.address("environments"))

    code = Agent(trainer, clients.datasets, environments, job, attempt, worker).run()
    raise typer.Exit(code)
