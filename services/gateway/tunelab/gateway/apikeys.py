"""API keys for the HTTP routes: created with a random secret shown once, stored as its SHA-256.

The secrets are 32 random bytes, so a plain SHA-256 is enough (nothing to brute-force; a slow
password hash would only slow every request down). Verification hashes the presented secret and
looks the digest up in an in-memory index: rebuilt from the database on every change made here
(a deleted key is refused by the next request), and every few seconds (``reload``, called by the
gateway) for changes made by other gateways sharing the database. Expiry is checked on every
request. ``last_used_time`` is written back in batches, off the request path.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from tunelab.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from tunelab.common.names import check_id
from tunelab.gateway.registry import ApiKeyRecord, Registry

SECRET_PREFIX = "tl-"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's id, and the models it may call (empty: all)."""

    key_id: str
    models: frozenset[str] = frozenset()

    def check_model(self, model: str) -> None:
        if self.models and model not in self.models:
            raise PermissionDenied(f"API key {self.key_id!r} may not call model {model!r}")


ANONYMOUS = Caller("")


class ApiKeys:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._by_digest: dict[str, ApiKeyRecord] = {}
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        # Reads and swaps of the index in one piece: a periodic reload that read the table before a
        # delete must not swap its stale index in after the delete's own reload.
        self._reload_lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        """Rebuilds the index from the database."""
        with self._reload_lock:
            self._by_digest = {k.secret_sha256: k for k in self.registry.all_keys()}

    @property
    def any(self) -> bool:
        return bool(self._by_digest)

    def create(
        self,
        key_id: str,
        display_name: str = "",
        models: tuple[str, ...] = (),
        expire_time: float | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        key_id = check_id(key_id or f"key-{secrets.token_hex(4)}", "api_key_id")
        if expire_time is not None and expire_time <= time.time():
            raise InvalidArgument("api_key.expire_time is in the past")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        rec = ApiKeyRecord(
            id=key_id,
            display_name=display_name,
            secret_prefix=secret[:7],
            secret_sha256=digest(secret),
            models=tuple(models),
            create_time=time.time(),
            expire_time=expire_time,
        )
        self.registry.add_key(rec)
        self.reload()
        return rec, secret

    def get(self, key_id: str) -> ApiKeyRecord:
        return self._with_last_use(self.registry.key(key_id))

    def list(self) -> list[ApiKeyRecord]:
        return [self._with_last_use(k) for k in self.registry.all_keys()]

    def delete(self, key_id: str) -> None:
        self.registry.remove_key(key_id)
        self.reload()

    def _with_last_use(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        with self._lock:
            used = self._used.get(rec.id)
        if used is None:
            return rec
        return ApiKeyRecord(**{**rec.__dict__, "last_used_time": used})

    def verify(self, authorization: str | None) -> Caller:
        """The caller of ``Authorization: Bearer <secret>``; Unauthenticated for a missing, unknown
        or expired key."""
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise Unauthenticated("send an API key: `Authorization: Bearer tl-…` (`tunelab key create`)")
        rec = self._by_digest.get(digest(authorization[7:].strip()))
        if rec is None:
            raise Unauthenticated("the API key is not valid (revoked or mistyped)")
        now = time.time()
        if rec.expired(now):
            raise Unauthenticated(f"the API key {rec.id!r} expired")
        self._used[rec.id] = now  # a dict store is atomic; flush_usage copies under the lock
        return Caller(rec.id, frozenset(rec.models))

    def flush_usage(self) -> None:
        """Writes the last-use times gathered since the last flush (called by a background loop)."""
        with self._lock:
            used = dict(self._used)
        if used:
            self.registry.touch_keys(used)
