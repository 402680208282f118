"""Idempotency-Key for money-moving requests: same key + same body = the first answer again.

The stored answer and the ledger change commit in one transaction, and concurrent requests with the
same key are serialised by an advisory lock, so a retry can never book twice. Only successful answers
are stored: a refused request (say, 409 insufficient funds) may be retried with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa

from api.errors import ApiError
from ledger import Ledger, Tx

_json = msgspec.json.Encoder(order="deterministic")
KEY_LENGTH_MAX = 255


def require_key(value: str | None) -> str:
    if value is None or not value.strip():
        raise ApiError(400, "missing_idempotency_key", "send an Idempotency-Key header (a unique string per request)")
    return check_key(value)


def check_key(value: str) -> str:
    """A key as the OpenAPI document states it (api.openapi): 1 to KEY_LENGTH_MAX printable ASCII characters (spaces
    inside, not around: HTTP strips those)."""
    key = value.strip()
    if len(key) > KEY_LENGTH_MAX:
        raise ApiError(400, "invalid_idempotency_key", f"Idempotency-Key is longer than {KEY_LENGTH_MAX} characters")
    if not key or not all(" " <= ch <= "~" for ch in key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be printable ASCII characters")
    return key


def once(ledger: Ledger, scope: str, key: str, request: object,
         work: Callable[[Tx], tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]]:
    """Run `work` once per (scope, key); replay its (status, body) for the same request, 409 for another."""
    request_hash = hashlib.sha256(_json.encode(request)).digest()

    def unit(tx: Tx) -> tuple[int, dict[str, Any]]:
        c = tx.connection
        c.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:s, 1))"), {"s": f"{scope}\n{key}"})
        row = c.execute(sa.text("""SELECT request_hash, status_code, response FROM api_idempotency
                                   WHERE scope = :s AND idempotency_key = :k"""), {"s": scope, "k": key}).first()
        if row is not None:
            if bytes(row.request_hash) != request_hash:
                raise ApiError(409, "idempotency_conflict",
                               "this Idempotency-Key was already used with a different request body")
            return row.status_code, row.response
        status, body = work(tx)
        c.execute(sa.text("""INSERT INTO api_idempotency (scope, idempotency_key, request_hash, status_code, response)
                             VALUES (:s, :k, :h, :c, CAST(:r AS jsonb))"""),
                  {"s": scope, "k": key, "h": request_hash, "c": status, "r": _json.encode(body).decode()})
        return status, body

    return ledger.transact(unit)
