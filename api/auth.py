"""API keys with roles: finance (read), operator (read + write), admin (everything).

A key is `ilk_<prefix>_<secret>`; only the SHA-256 of the whole key is stored (the key has 256 bits of
entropy, so a slow hash would add nothing). Verified keys are cached for a few seconds per process, so
a revocation takes effect within `KEY_CACHE_TTL_S`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Literal

import sqlalchemy as sa
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from api.errors import ApiError

Role = Literal["finance", "operator", "admin"]
RANK: dict[str, int] = {"finance": 1, "operator": 2, "admin": 3}
KEY_CACHE_TTL_S = 10.0
KEY_CACHE_SIZE_MAX = 10_000


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def create_key(engine: sa.Engine, role: Role, name: str = "") -> str:
    """Make a key, store its hash, and return the key itself — the only time it is ever seen."""
    if role not in RANK:
        raise ValueError(f"role must be one of {', '.join(RANK)}")
    prefix = secrets.token_hex(4)
    key = f"ilk_{prefix}_{secrets.token_urlsafe(32)}"
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO api_key (prefix, secret_hash, role, name) VALUES (:p, :h, :r, :n)"),
            {"p": prefix, "h": _hash(key), "r": role, "n": name})
    return key


class KeyStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._cache: dict[bytes, tuple[str, str, float]] = {}
        self._lock = threading.Lock()

    def role_of(self, key: str) -> tuple[str, str] | None:
        """(role, prefix) for a valid, unrevoked key; None otherwise."""
        parts = key.split("_")
        if len(parts) < 3 or parts[0] != "ilk" or len(key) > 200:
            return None
        digest = _hash(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[2] > now:
            return cached[0], cached[1]
        with self.engine.connect() as connection:
            row = connection.execute(sa.text(
                "SELECT role, secret_hash FROM api_key WHERE prefix = :p AND revoked_at IS NULL"),
                {"p": parts[1]}).first()
        if row is None or not hmac.compare_digest(bytes(row.secret_hash), digest):
            return None
        with self._lock:
            if len(self._cache) >= KEY_CACHE_SIZE_MAX:
                self._cache.clear()
            self._cache[digest] = (row.role, parts[1], now + KEY_CACHE_TTL_S)
        return row.role, parts[1]


def bearer(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_role(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard: the route's `opt["role"]` is the least role it needs; writes need operator."""
    from anyio import to_thread

    needed = handler.opt.get("role", "finance")
    token = bearer(connection) or connection.cookies.get("invledger_key")
    if not token:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <API key>")
    store: KeyStore = connection.app.state.key_store
    found = await to_thread.run_sync(store.role_of, token)
    if found is None:
        raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
    role, prefix = found
    if RANK[role] < RANK[needed]:
        raise ApiError(403, "forbidden", f"this needs the {needed} role; the key has {role}")
    connection.scope.setdefault("state", {})["principal"] = f"{role}:{prefix}"
