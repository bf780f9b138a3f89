"""Assembles the trainer service from settings: ``build_server(settings)``."""

from __future__ import annotations

from tunelab.common.grpc.server import GrpcServer, Registration
from tunelab.trainer.local import LocalExecutor
from tunelab.trainer.service import Trainer, build_trainer
from tunelab.trainer.servicer import TrainerServicer
from tunelab.trainer.settings import TrainerSettings
from tunelab.trainer.v1 import trainer_pb2, trainer_pb2_grpc


def build_server(settings: TrainerSettings, trainer: Trainer | None = None) -> tuple[GrpcServer, Trainer]:
    trainer = trainer or build_trainer(settings)
    full_name = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
    server = GrpcServer(
        "trainer",
        f"{settings.host}:{settings.port}",
        [
            Registration(
                full_name, trainer_pb2_grpc.add_TrainerServiceServicer_to_server, TrainerServicer(trainer)
            )
        ],
        auth_token=settings.auth_token.get_secret_value(),
        registry=trainer.metrics.registry,
        metrics_port=settings.metrics_port or None,
        on_stop=trainer.close,
    )
    if isinstance(trainer.executor, LocalExecutor) and not settings.agent_trainer_addr:
        host, port = server.address.rsplit(":", 1)
        host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]", "::") else host
        trainer.executor.agent_env["TUNELAB_TRAINER_ADDR"] = f"{host}:{port}"
    return server, trainer
