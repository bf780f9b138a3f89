"""The gateway's state: deployment specs and their last known state, and API keys (hashed).

Replica health is not stored: it is re-learned by health checks after a restart.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Engine, Float, MetaData, String, Table, Text, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tunelab.common.errors import AlreadyExists, NotFound
from tunelab.gateway.specs import DeploymentSpec

metadata = MetaData()

deployments_t = Table(
    "deployments",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("error", Text, nullable=False, default=""),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
    Column("ready_time", Float, nullable=True),
)

api_keys_t = Table(
    "api_keys",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("display_name", Text, nullable=False, default=""),
    Column("secret_prefix", String(16), nullable=False),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("models", Text, nullable=False, default="[]"),
    Column("create_time", Float, nullable=False),
    Column("expire_time", Float, nullable=True),
    Column("last_used_time", Float, nullable=True),
)


@dataclass(frozen=True)
class StoredDeployment:
    spec: DeploymentSpec
    state: str
    error: str
    create_time: float
    update_time: float
    ready_time: float | None


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    display_name: str
    secret_prefix: str
    secret_sha256: str
    models: tuple[str, ...]
    create_time: float
    expire_time: float | None = None
    last_used_time: float | None = None

    @property
    def name(self) -> str:
        return f"apiKeys/{self.id}"

    def expired(self, now: float | None = None) -> bool:
        return self.expire_time is not None and (now or time.time()) >= self.expire_time


def _deployment(row: Any) -> StoredDeployment:
    m = row._mapping
    return StoredDeployment(
        DeploymentSpec.from_dict(json.loads(m["spec"])),
        m["state"],
        m["error"],
        m["create_time"],
        m["update_time"],
        m["ready_time"],
    )


def _key(row: Any) -> ApiKeyRecord:
    m = dict(row._mapping)
    m["models"] = tuple(json.loads(m["models"]))
    return ApiKeyRecord(**m)


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- deployments ------------------------------------------------------------------------------
    def add_deployment(self, spec: DeploymentSpec, now: float) -> None:
        try:
            with self.engine.begin() as c:
                c.execute(
                    insert(deployments_t).values(
                        id=spec.id,
                        spec=json.dumps(spec.to_dict()),
                        state="PENDING",
                        error="",
                        create_time=now,
                        update_time=now,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(f"deployment {spec.id!r} exists already") from None

    def save_deployment(
        self, spec: DeploymentSpec, state: str, error: str, update_time: float, ready_time: float | None
    ) -> None:
        with self.engine.begin() as c:
            c.execute(
                update(deployments_t)
                .where(deployments_t.c.id == spec.id)
                .values(
                    spec=json.dumps(spec.to_dict()),
                    state=state,
                    error=error,
                    update_time=update_time,
                    ready_time=ready_time,
                )
            )

    def deployments(self) -> list[StoredDeployment]:
        with self.engine.connect() as c:
            return [_deployment(r) for r in c.execute(select(deployments_t).order_by(deployments_t.c.id))]

    def remove_deployment(self, deployment_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(delete(deployments_t).where(deployments_t.c.id == deployment_id))

    # -- API keys ---------------------------------------------------------------------------------
    def add_key(self, rec: ApiKeyRecord) -> None:
        try:
            with self.engine.begin() as c:
                c.execute(
                    insert(api_keys_t).values(**{**rec.__dict__, "models": json.dumps(list(rec.models))})
                )
        except IntegrityError:
            raise AlreadyExists(f"API key {rec.id!r} exists already") from None

    def all_keys(self) -> list[ApiKeyRecord]:
        with self.engine.connect() as c:
            return [_key(r) for r in c.execute(select(api_keys_t).order_by(api_keys_t.c.id))]

    def key(self, key_id: str) -> ApiKeyRecord:
        with self.engine.connect() as c:
            row = c.execute(select(api_keys_t).where(api_keys_t.c.id == key_id)).first()
        if row is None:
            raise NotFound(f"API key {key_id!r} does not exist")
        return _key(row)

    def remove_key(self, key_id: str) -> None:
        with self.engine.begin() as c:
            if c.execute(delete(api_keys_t).where(api_keys_t.c.id == key_id)).rowcount == 0:
                raise NotFound(f"API key {key_id!r} does not exist")

    def touch_keys(self, used: dict[str, float]) -> None:
        with self.engine.begin() as c:
            for key_id, when in used.items():
                c.execute(update(api_keys_t).where(api_keys_t.c.id == key_id).values(last_used_time=when))
