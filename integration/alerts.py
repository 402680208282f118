"""Alerts: stored, raised once per open problem, resolved when it goes away, acknowledged by people.

Sending to ALERT_WEBHOOK_URL happens after commit (see `notify_pending`), so a failed send never
loses an alert and never blocks the write that raised it.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import msgspec
import sqlalchemy as sa

log = logging.getLogger("integration.alerts")
_json = msgspec.json.Encoder(order="deterministic")
NOTIFY_BATCH_MAX = 100
NOTIFY_TIMEOUT_S = 5.0


def raise_alert(connection: sa.Connection, *, kind: str, dedup_key: str, message: str,
                account_id: str | None = None, event_key: str | None = None,
                details: dict[str, Any] | None = None) -> int | None:
    """Open an alert unless one is already open (or acknowledged) for `dedup_key`; its id if new."""
    return connection.execute(sa.text("""
        INSERT INTO alert (kind, dedup_key, message, account_id, event_key, details)
        VALUES (:kind, :dedup_key, :message, :account_id, :event_key, CAST(:details AS jsonb))
        ON CONFLICT (dedup_key) WHERE status <> 'resolved' DO NOTHING RETURNING id"""), {
        "kind": kind, "dedup_key": dedup_key, "message": message[:2000], "account_id": account_id,
        "event_key": event_key, "details": _json.encode(details or {}).decode()}).scalar()


def resolve_alert(connection: sa.Connection, dedup_key: str) -> bool:
    return bool(connection.execute(sa.text("""
        UPDATE alert SET status = 'resolved', resolved_at = now(), updated_at = now()
         WHERE dedup_key = :k AND status <> 'resolved'"""), {"k": dedup_key}).rowcount)


def acknowledge(connection: sa.Connection, alert_id: int, by: str) -> dict[str, Any] | None:
    row = connection.execute(sa.text("""
        UPDATE alert SET status = CASE WHEN status = 'open' THEN 'acknowledged' ELSE status END,
               acknowledged_at = COALESCE(acknowledged_at, now()), acknowledged_by = COALESCE(acknowledged_by, :by),
               updated_at = now()
         WHERE id = :id RETURNING *"""), {"id": alert_id, "by": by}).mappings().first()
    return dict(row) if row else None


ANSWER_BYTES_MAX = 64 * 1024  # what is read of the webhook's answer at most; the rest is not waited for


def post(client: httpx.Client, url: str, payload: dict[str, Any]) -> None:
    """POST `payload` as JSON to the alert webhook; raise httpx.HTTPStatusError on a 4xx/5xx. Its answer is read
    at most ANSWER_BYTES_MAX bytes: a misbehaving endpoint cannot make the ledger hold an endless body."""
    with client.stream("POST", url, content=_json.encode(payload),
                       headers={"content-type": "application/json"}) as response:
        read = 0
        for chunk in response.iter_raw():
            read += len(chunk)
            if read >= ANSWER_BYTES_MAX:
                break
        if response.status_code >= 400:
            raise httpx.HTTPStatusError(f"the alert webhook answered {response.status_code}",
                                        request=response.request, response=response)


def describe(error: httpx.HTTPError) -> str:
    """An alert webhook failure without its URL (ALERT_WEBHOOK_URL is a secret: it carries the hook's token)."""
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return type(error).__name__


def notify_pending(engine: sa.Engine, url: str | None, *, client: httpx.Client | None = None) -> int:
    """POST alerts not yet sent to `url` (Slack-compatible `text`); mark them sent. Returns how many."""
    if not url:
        return 0
    sent = 0
    own = client is None
    client = client or httpx.Client(timeout=NOTIFY_TIMEOUT_S, follow_redirects=False)
    try:
        with engine.begin() as connection:
            rows = connection.execute(sa.text("""
                SELECT id, kind, account_id, event_key, message, status, created_at FROM alert
                 WHERE notified_at IS NULL ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"""),
                {"n": NOTIFY_BATCH_MAX}).mappings().all()
            for row in rows:
                payload = {"text": f"[invledger] {row['kind']}: {row['message']}", "alert_id": row["id"],
                           "kind": row["kind"], "account_id": row["account_id"], "event_key": row["event_key"],
                           "status": row["status"], "created_at": row["created_at"].isoformat()}
                try:
                    post(client, url, payload)
                except httpx.HTTPError as error:
                    log.warning("alert notification failed", extra={"alert_id": row["id"], "error": describe(error)})
                    break
                connection.execute(sa.text("UPDATE alert SET notified_at = now() WHERE id = :id"),
                                   {"id": row["id"]})
                sent += 1
    finally:
        if own:
            client.close()
    return sent
