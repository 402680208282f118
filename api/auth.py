"""API keys with roles: finance (read), operator (read + write), admin (everything).

A key is `ilk_<prefix>_<secret>`; only the SHA-256 of the whole key is stored (the key has 256 bits of
entropy, so a slow hash would add nothing). A key may expire (`expires_at`) and is revoked by
`invledger apikey revoke|rotate`. Verified keys are cached for a few seconds per process, so a key revoked by
another process is refused within `KEY_CACHE_TTL_S` (tests/api/test_keys.py holds that bound).

The API takes a key only as `Authorization: Bearer`. The pages sign in to a server-side session: the cookie is a
random session id, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal

import msgspec
import sqlalchemy as sa
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from api.errors import ApiError
from ledger.principal import PRINCIPAL

Role = Literal["finance", "operator", "admin"]
RANK: dict[str, int] = {"finance": 1, "operator": 2, "admin": 3}
KEY_CACHE_TTL_S = 10.0
KEY_CACHE_SIZE_MAX = 10_000
KEY_MISS_TTL_S = 5.0  # a key refused as unknown is refused without a look-up for this long
KEY_PREFIX_MEMORY_S = 3600.0  # how long a prefix seen valid lets its key past a shut-out address


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A key as `invledger apikey list` shows it: never the key itself."""

    id: int
    prefix: str
    role: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def create_key(engine: sa.Engine, role: Role, name: str = "", *, expires_at: datetime | None = None) -> str:
    """Make a key, store its hash, and return the key itself — the only time it is ever seen."""
    if role not in RANK:
        raise ValueError(f"role must be one of {', '.join(RANK)}")
    with engine.begin() as connection:
        return _insert_key(connection, role, name, expires_at)


def _insert_key(c: sa.Connection, role: str, name: str, expires_at: datetime | None) -> str:
    prefix = secrets.token_hex(4)
    key = f"ilk_{prefix}_{secrets.token_urlsafe(32)}"
    c.execute(sa.text("INSERT INTO api_key (prefix, secret_hash, role, name, expires_at) VALUES (:p, :h, :r, :n, :e)"),
              {"p": prefix, "h": _hash(key), "r": role, "n": name, "e": expires_at})
    return key


def list_keys(engine: sa.Engine) -> list[KeyInfo]:
    with engine.connect() as c:
        rows = c.execute(sa.text("""
            SELECT id, prefix, role, name, created_at, expires_at, last_used_at, revoked_at
              FROM api_key ORDER BY id""")).mappings()
        return [KeyInfo(**row) for row in rows]


def revoke_key(engine: sa.Engine, prefix: str) -> bool:
    """Revoke the key (and end its page sessions); False when no such unrevoked key exists."""
    with engine.begin() as c:
        return _revoke(c, prefix)


def _revoke(c: sa.Connection, prefix: str) -> bool:
    key_id = c.execute(sa.text("""
        UPDATE api_key SET revoked_at = now() WHERE prefix = :p AND revoked_at IS NULL RETURNING id"""),
        {"p": prefix}).scalar()
    if key_id is not None:
        c.execute(sa.text("UPDATE page_session SET revoked_at = now() WHERE api_key_id = :k AND revoked_at IS NULL"),
                  {"k": key_id})
    return key_id is not None


def rotate_key(engine: sa.Engine, prefix: str, *, grace: timedelta = timedelta(0)) -> str:
    """A new key with the old one's role and name; the old one stops working after `grace` (at once by default).
    Returns the new key (shown once). LookupError when no such unrevoked key exists. One transaction: never two
    keys where one was meant, nor none."""
    with engine.begin() as c:
        old = c.execute(sa.text("SELECT role, name FROM api_key WHERE prefix = :p AND revoked_at IS NULL FOR UPDATE"),
                        {"p": prefix}).first()
        if old is None:
            raise LookupError(f"no unrevoked key with prefix {prefix!r}")
        new = _insert_key(c, old.role, old.name, None)
        if grace > timedelta(0):
            c.execute(sa.text("""
                UPDATE api_key SET expires_at = LEAST(COALESCE(expires_at, 'infinity'), now() + :g)
                 WHERE prefix = :p"""), {"p": prefix, "g": grace})
        else:
            _revoke(c, prefix)
    return new


class KeyStore:
    """Checks keys (and page sessions) against the database. A valid key is cached for KEY_CACHE_TTL_S, so a key
    revoked or expired (by the CLI, in another process) is refused by the API within that bound. Sessions are not
    cached: a sign-out, or a revocation of the session's key, ends a page session at once."""

    def __init__(self, engine: sa.Engine, *, ttl_s: float = KEY_CACHE_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[bytes, tuple[str, str, float]] = {}
        self._misses: dict[bytes, float] = {}  # keys nobody issued: not looked up again for KEY_MISS_TTL_S
        self._good_prefixes: dict[str, float] = {}  # prefixes of keys seen valid, until when
        self._lock = threading.Lock()

    def seen_valid(self, key: str) -> bool:
        """Whether this process has seen a valid key with `key`'s prefix within KEY_PREFIX_MEMORY_S (no database):
        what lets a real client through while its address is shut out for made-up keys (api.ratelimit). A
        made-up secret under a real prefix still gets its look-up — and the per-key limit."""
        parts = key.split("_")
        return len(parts) >= 3 and self._good_prefixes.get(parts[1], 0.0) > self._clock()

    def role_of(self, key: str) -> tuple[str, str] | None:
        """(role, prefix) for a valid key (not revoked, not expired); None otherwise."""
        parts = key.split("_")
        if len(parts) < 3 or parts[0] != "ilk" or len(key) > 200:
            return None
        digest = _hash(key)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached and cached[2] > now:
            return cached[0], cached[1]
        if self._misses.get(digest, 0.0) > now:  # a flood of made-up keys does not reach the database
            return None
        with self.engine.begin() as connection:
            row = connection.execute(sa.text("""
                SELECT id, role, secret_hash FROM api_key
                 WHERE prefix = :p AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"""),
                {"p": parts[1]}).first()
            if row is None or not hmac.compare_digest(bytes(row.secret_hash), digest):
                with self._lock:
                    if len(self._misses) >= KEY_CACHE_SIZE_MAX:
                        self._misses.clear()
                    self._misses[digest] = now + KEY_MISS_TTL_S
                return None
            connection.execute(sa.text("UPDATE api_key SET last_used_at = now() WHERE id = :i"), {"i": row.id})
        with self._lock:
            if len(self._cache) >= KEY_CACHE_SIZE_MAX:
                self._cache.clear()
            self._cache[digest] = (row.role, parts[1], now + self.ttl_s)
            if len(self._good_prefixes) >= KEY_CACHE_SIZE_MAX:
                self._good_prefixes.clear()
            self._good_prefixes[parts[1]] = now + KEY_PREFIX_MEMORY_S
        return row.role, parts[1]

    # -------------------------------------------------------------------------------------- page sessions

    def open_session(self, key: str, max_age_s: int) -> str | None:
        """Sign a browser in with `key`: a new session id (for the cookie), or None for an unknown key."""
        if self.role_of(key) is None:
            return None
        session_id = secrets.token_urlsafe(32)
        with self.engine.begin() as c:
            inserted = c.execute(sa.text("""
                INSERT INTO page_session (id_sha256, api_key_id, expires_at)
                SELECT :s, id, now() + make_interval(secs => :age) FROM api_key
                 WHERE prefix = :p AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"""),
                {"s": _hash(session_id), "p": key.split("_")[1], "age": max_age_s}).rowcount
        return session_id if inserted else None

    def session(self, session_id: str) -> tuple[str, str] | None:
        """(role, prefix) of a live session: not expired, not signed out, its key neither revoked nor expired."""
        if not session_id or len(session_id) > 100:
            return None
        with self.engine.connect() as c:
            row = c.execute(sa.text("""
                SELECT k.role, k.prefix FROM page_session s JOIN api_key k ON k.id = s.api_key_id
                 WHERE s.id_sha256 = :s AND s.revoked_at IS NULL AND s.expires_at > now()
                   AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())"""),
                {"s": _hash(session_id)}).first()
        return (row.role, row.prefix) if row else None

    def close_session(self, session_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(sa.text("UPDATE page_session SET revoked_at = now() WHERE id_sha256 = :s AND revoked_at IS NULL"),
                      {"s": _hash(session_id)})


def principal_of(role: str, prefix: str) -> str:
    """Who a request acts as, as entries, status changes, acknowledgements and retries record it."""
    return f"apikey:{prefix}:{role}"


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
    # Bearer only: a cookie is sent by the browser on its own, so a form on any page of the same site could
    # otherwise write with a visitor's credentials (CSRF). The pages have sessions and CSRF tokens of their own.
    token = bearer(connection)
    if not token:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <API key>")
    store: KeyStore = connection.app.state.key_store
    found = await to_thread.run_sync(store.role_of, token)
    if found is None:
        raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
    role, prefix = found
    if RANK[role] < RANK[needed]:
        raise ApiError(403, "forbidden", f"this needs the {needed} role; the key has {role}")
    principal = principal_of(role, prefix)
    connection.scope.setdefault("state", {})["principal"] = principal
    PRINCIPAL.set(principal)  # what this request books is recorded as done by this key (ledger.principal.acting_as)
