"""Stored builds, packed layers, remembered resolutions and leases in the state database."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from tunelab.environments.pack import Layer
from tunelab.environments.tables import builds_t, layers_t, leases_t, resolutions_t


@dataclass(frozen=True)
class BuildRecord:
    env_key: str
    python_version: str
    platform: str
    package_count: int
    size_bytes: int  # unpacked
    stored_bytes: int  # sum of its layers' blob sizes
    layers: tuple[Layer, ...]
    manifest_sha256: str
    ready_time: float


@dataclass(frozen=True)
class Resolution:
    env_key: str
    lock: str
    package_count: int
    resolve_time: float


@dataclass(frozen=True)
class LeaseRecord:
    env_id: str
    lease_id: str
    holder: str
    env_key: str
    create_time: float
    expire_time: float

    @property
    def name(self) -> str:
        return f"environments/{self.env_id}/leases/{self.lease_id}"


def lease_id_of(holder: str) -> str:
    """One lease per holder and environment: its id is derived from the holder."""
    return hashlib.sha256(holder.encode()).hexdigest()[:16]


def _build(row: Any) -> BuildRecord:
    m = dict(row._mapping)
    m["layers"] = tuple(Layer(**layer) for layer in json.loads(m["layers"]))
    return BuildRecord(**m)


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- builds -----------------------------------------------------------------------------
    def get_build(self, env_key: str) -> BuildRecord | None:
        with self.engine.connect() as db:
            row = db.execute(select(builds_t).where(builds_t.c.env_key == env_key)).first()
        return _build(row) if row else None

    def builds(self) -> list[BuildRecord]:
        with self.engine.connect() as db:
            return [_build(r) for r in db.execute(select(builds_t))]

    def add_build(self, build: BuildRecord) -> None:
        values = {**asdict(build), "layers": json.dumps([asdict(layer) for layer in build.layers])}
        with self.engine.begin() as db:
            db.execute(delete(builds_t).where(builds_t.c.env_key == build.env_key))
            db.execute(insert(builds_t).values(**values))

    def delete_build(self, env_key: str) -> None:
        with self.engine.begin() as db:
            db.execute(delete(builds_t).where(builds_t.c.env_key == env_key))

    # -- layers -----------------------------------------------------------------------------
    def layers(self, keys: list[str]) -> dict[str, Layer]:
        found: dict[str, Layer] = {}
        with self.engine.connect() as db:
            for i in range(0, len(keys), 500):
                rows = db.execute(select(layers_t).where(layers_t.c.layer_key.in_(keys[i : i + 500])))
                for r in rows:
                    found[r.layer_key] = Layer(r.name, r.sha256, r.size, r.unpacked, r.files)
        return found

    def add_layers(self, layers: dict[str, Layer]) -> None:
        with self.engine.begin() as db:
            for key, layer in layers.items():
                db.execute(delete(layers_t).where(layers_t.c.layer_key == key))
                db.execute(insert(layers_t).values(layer_key=key, **asdict(layer)))

    def layer_blobs(self) -> set[str]:
        with self.engine.connect() as db:
            return {r[0] for r in db.execute(select(layers_t.c.sha256))}

    def forget_layer_blobs(self, blobs: set[str]) -> None:
        with self.engine.begin() as db:
            db.execute(delete(layers_t).where(layers_t.c.sha256.in_(sorted(blobs))))

    # -- resolutions ------------------------------------------------------------------------
    def resolution(self, key: str, max_age_s: float | None) -> Resolution | None:
        with self.engine.connect() as db:
            row = db.execute(select(resolutions_t).where(resolutions_t.c.resolution_key == key)).first()
        if row is None or (max_age_s is not None and time.time() - row.resolve_time > max_age_s):
            return None
        return Resolution(row.env_key, row.lock, row.package_count, row.resolve_time)

    def remember_resolution(self, key: str, res: Resolution) -> None:
        with self.engine.begin() as db:
            db.execute(delete(resolutions_t).where(resolutions_t.c.resolution_key == key))
            db.execute(insert(resolutions_t).values(resolution_key=key, **asdict(res)))

    # -- leases -----------------------------------------------------------------------------
    def acquire(self, env_id: str, holder: str, env_key: str, ttl_s: float) -> LeaseRecord:
        now = time.time()
        lease_id = lease_id_of(holder)
        with self.engine.begin() as db:
            renewed = db.execute(
                update(leases_t)
                .where(leases_t.c.env_id == env_id, leases_t.c.lease_id == lease_id)
                .values(expire_time=now + ttl_s, env_key=env_key)
            ).rowcount
            if not renewed:
                try:
                    db.execute(
                        insert(leases_t).values(
                            env_id=env_id,
                            lease_id=lease_id,
                            holder=holder,
                            env_key=env_key,
                            create_time=now,
                            expire_time=now + ttl_s,
                        )
                    )
                except IntegrityError:  # a concurrent acquire by the same holder won
                    pass
        return self.lease(env_id, lease_id) or LeaseRecord(
            env_id, lease_id, holder, env_key, now, now + ttl_s
        )

    def lease(self, env_id: str, lease_id: str) -> LeaseRecord | None:
        with self.engine.connect() as db:
            row = db.execute(
                select(leases_t).where(leases_t.c.env_id == env_id, leases_t.c.lease_id == lease_id)
            ).first()
        return LeaseRecord(**row._mapping) if row else None

    def release(self, env_id: str, lease_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(delete(leases_t).where(leases_t.c.env_id == env_id, leases_t.c.lease_id == lease_id))

    def active_leases(self, env_id: str | None = None) -> list[LeaseRecord]:
        query = select(leases_t).where(leases_t.c.expire_time > time.time())
        if env_id is not None:
            query = query.where(leases_t.c.env_id == env_id)
        with self.engine.connect() as db:
            return [LeaseRecord(**r._mapping) for r in db.execute(query.order_by(leases_t.c.create_time))]

    def drop_leases(self, env_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(delete(leases_t).where(leases_t.c.env_id == env_id))
