"""Shell completion of resource names: ``tunelab job logs <TAB>`` asks the trainer for its jobs.

These run while the shell completes a word, so each asks one service with a short deadline, from
the same settings as a command (the global flags already typed, env, config file, the running
stack), and answers nothing rather than an error when the service is not there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEADLINE_S = 2.0


def _names(ctx: Any, service: str, ask: Callable[[Any], list[str]]) -> list[str]:
    try:
        from tunelab.cli.config import load_config
        from tunelab.common.grpc.channel import open_channel

        flags = {k: v for k, v in ctx.find_root().params.items() if isinstance(v, str)}
        config = load_config(flags)
        with open_channel(config.address(service), config.token) as channel:
            return ask(channel)
    except Exception:  # noqa: BLE001 - a completion must never print a traceback into the shell
        return []


def _matching(names: list[str], prefix: str, incomplete: str) -> list[str]:
    short = [n.removeprefix(prefix) for n in names]
    typed = incomplete.lower()  # names are stored lower-case and looked up in any case
    return sorted(n for n in short if n.startswith(typed))


def datasets(ctx: Any, incomplete: str) -> list[str]:
    """Dataset names, or ``NAME@N`` versions once ``NAME@`` is typed."""
    from tunelab.datasets.v1 import datasets_pb2 as pb
    from tunelab.datasets.v1 import datasets_pb2_grpc as rpc

    def ask(channel: Any) -> list[str]:
        stub = rpc.DatasetServiceStub(channel)
        if "@" in incomplete:
            name = incomplete.split("@", 1)[0]
            req = pb.ListDatasetVersionsRequest(parent=f"datasets/{name}", page_size=1000)
            versions = stub.ListDatasetVersions(req, timeout=DEADLINE_S).versions
            return [f"{name}@{v.name.rsplit('/', 1)[1]}" for v in versions]
        resp = stub.ListDatasets(pb.ListDatasetsRequest(page_size=1000), timeout=DEADLINE_S)
        return [d.name for d in resp.datasets]

    return _matching(_names(ctx, "datasets", ask), "datasets/", incomplete)


def jobs(ctx: Any, incomplete: str) -> list[str]:
    from tunelab.trainer.v1 import trainer_pb2 as pb
    from tunelab.trainer.v1 import trainer_pb2_grpc as rpc

    def ask(channel: Any) -> list[str]:
        stub = rpc.TrainerServiceStub(channel)
        resp = stub.ListJobs(pb.ListJobsRequest(page_size=1000), timeout=DEADLINE_S)
        return [j.name for j in resp.jobs]

    return _matching(_names(ctx, "trainer", ask), "jobs/", incomplete)


def environments(ctx: Any, incomplete: str) -> list[str]:
    from tunelab.environments.v1 import environments_pb2 as pb
    from tunelab.environments.v1 import environments_pb2_grpc as rpc

    def ask(channel: Any) -> list[str]:
        stub = rpc.EnvironmentServiceStub(channel)
        resp = stub.ListEnvironments(pb.ListEnvironmentsRequest(page_size=1000), timeout=DEADLINE_S)
        return [e.name for e in resp.environments]

    return _matching(_names(ctx, "environments", ask), "environments/", incomplete)


def deployments(ctx: Any, incomplete: str) -> list[str]:
    from tunelab.gateway.v1 import gateway_pb2 as pb
    from tunelab.gateway.v1 import gateway_pb2_grpc as rpc

    def ask(channel: Any) -> list[str]:
        stub = rpc.GatewayServiceStub(channel)
        resp = stub.ListDeployments(pb.ListDeploymentsRequest(page_size=1000), timeout=DEADLINE_S)
        return [d.name for d in resp.deployments]

    return _matching(_names(ctx, "gateway", ask), "deployments/", incomplete)
