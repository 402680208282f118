"""The transactional outbox, delivered: at least once, in order per account, with a dead-letter state.

Rows are written by the ledger in the same transaction as the change they announce (`Tx.emit`). Here
each row is claimed with FOR UPDATE SKIP LOCKED, so several workers share the work without sending
one row twice at once; only the head of each account's queue can be claimed (an older row that is
pending or dead blocks the rest), which keeps per-account order. The row stays locked while it is
sent, and is marked delivered in the same transaction:
- a crash after the ledger commit but before delivery leaves the row pending: it is sent later;
- a crash after the engine applied it but before we marked it leaves it pending too: it is sent
  again with the same Idempotency-Key (`outbox-<id>`), which the engine applies once.
After `attempts_max` failures a row is dead: it is kept, raises an alert, blocks its account's queue,
and an operator can retry it (`retry_dead`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from integration import alerts
from ledger.principal import PRINCIPAL

STATUSES = ("pending", "delivered", "dead")

log = logging.getLogger("integration.outbox")

ATTEMPTS_MAX = 10
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 300.0
BATCH_MAX = 200


class OutboxEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    account_id: str
    topic: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime

    @property
    def idempotency_key(self) -> str:
        return f"outbox-{self.id}"


class DeliveryStats(msgspec.Struct, kw_only=True):
    delivered: int = 0
    failed: int = 0
    dead: int = 0


Sender = Callable[[OutboxEvent], None]

_CLAIM = sa.text("""
SELECT o.id, o.account_id, o.topic, o.payload, o.attempts, o.created_at
  FROM outbox_event o
 WHERE o.status = 'pending' AND o.next_attempt_at <= now()
   AND (CAST(:accounts AS text[]) IS NULL OR o.account_id = ANY(CAST(:accounts AS text[])))
   AND NOT EXISTS (SELECT 1 FROM outbox_event p
                    WHERE p.account_id = o.account_id AND p.id < o.id AND p.status <> 'delivered')
 ORDER BY o.id
 LIMIT 1
 FOR UPDATE SKIP LOCKED
""")


def backoff_s(attempts: int) -> float:
    """Exponential with full jitter, capped."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempts))


def deliver_one(engine: sa.Engine, send: Sender, *, attempts_max: int = ATTEMPTS_MAX,
                account_ids: list[str] | None = None) -> str | None:
    """Claim and send one row (of `account_ids` only, if given); 'delivered', 'failed', 'dead', or None."""
    with engine.begin() as connection:
        row = connection.execute(_CLAIM, {"accounts": account_ids}).mappings().first()
        if row is None:
            return None
        event = OutboxEvent(**row)
        try:
            send(event)
        except Exception as error:  # noqa: BLE001 — any failure to deliver is retried later
            attempts = event.attempts + 1
            dead = attempts >= attempts_max
            connection.execute(sa.text("""
                UPDATE outbox_event SET attempts = :attempts, last_error = :error,
                       status = CASE WHEN :dead THEN 'dead' ELSE 'pending' END,
                       next_attempt_at = now() + make_interval(secs => :delay)
                 WHERE id = :id"""), {"attempts": attempts, "error": f"{type(error).__name__}: {error}"[:2000],
                                      "dead": dead, "delay": backoff_s(attempts), "id": event.id})
            log.warning("outbox delivery failed", extra={"outbox_id": event.id, "topic": event.topic,
                                                         "attempts": attempts, "error": str(error)[:500]})
            if dead:
                alerts.raise_alert(connection, kind="outbox_dead_letter", dedup_key=f"outbox:{event.id}",
                                   message=f"notification {event.topic} #{event.id} for {event.account_id} "
                                           f"failed {attempts} times; its account's notifications wait",
                                   account_id=event.account_id, event_key=event.idempotency_key)
                return "dead"
            return "failed"
        connection.execute(sa.text(
            "UPDATE outbox_event SET status = 'delivered', delivered_at = now(), attempts = attempts + 1 "
            "WHERE id = :id"), {"id": event.id})
        return "delivered"


def deliver_pending(engine: sa.Engine, send: Sender, *, batch_max: int = BATCH_MAX,
                    attempts_max: int = ATTEMPTS_MAX, account_ids: list[str] | None = None) -> DeliveryStats:
    """Deliver what is due, up to `batch_max` rows (of `account_ids` only, if given)."""
    stats = DeliveryStats()
    for _ in range(batch_max):
        result = deliver_one(engine, send, attempts_max=attempts_max, account_ids=account_ids)
        if result is None:
            break
        setattr(stats, result, getattr(stats, result) + 1)
    return stats


def retry_dead(engine: sa.Engine, outbox_id: int | None = None) -> int:
    """Put dead rows (one, or all) back in the queue; their alerts resolve. Returns how many."""
    with engine.begin() as connection:
        ids = connection.execute(sa.text("""
            UPDATE outbox_event SET status = 'pending', attempts = 0, next_attempt_at = now(), retried_by = :by
             WHERE status = 'dead' AND (CAST(:id AS bigint) IS NULL OR id = :id) RETURNING id"""),
            {"id": outbox_id, "by": PRINCIPAL.get()}).scalars().all()
        for event_id in ids:
            alerts.resolve_alert(connection, f"outbox:{event_id}")
    return len(ids)


def listing(engine: sa.Engine, *, status: str | None = None, after: int | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("""
            SELECT id, account_id, topic, payload, status, attempts, created_at, next_attempt_at, last_error,
                   delivered_at, retried_by FROM outbox_event
             WHERE (CAST(:status AS text) IS NULL OR status = :status)
               AND (CAST(:after AS bigint) IS NULL OR id > :after)
             ORDER BY id LIMIT :limit"""), {"status": status, "after": after, "limit": max(1, min(limit, 1000))})
        return [dict(row) for row in rows.mappings()]
