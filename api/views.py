"""Read-side views of operational tables written by other rooms: alerts and reconciliation runs.

Plain SQL for reading only (writes go through `integration.alerts`). Reconciliation runs are read by
`reconciliation_runs`, which answers None until the reconciliation tables exist; the reconciliation
work replaces it with its own reader through `use_reconciliation_reader` (or by editing `_read_runs`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa

ALERT_STATUSES = ("open", "acknowledged", "resolved")
RUNS_LIMIT_MAX = 100


def alerts(engine: sa.Engine, *, status: str | None = None, after: int | None = None,
           limit: int = 100) -> list[dict[str, Any]]:
    """Alerts newest first (by id), `limit` at a time below the id `after` (a cursor)."""
    with engine.connect() as c:
        return [dict(r) for r in c.execute(sa.text("""
            SELECT id, kind, status, account_id, event_key, message, details, created_at, updated_at,
                   acknowledged_at, acknowledged_by, resolved_at
              FROM alert
             WHERE (CAST(:status AS text) IS NULL OR status = :status)
               AND (CAST(:after AS bigint) IS NULL OR id < :after)
             ORDER BY id DESC LIMIT :limit"""), {"status": status, "after": after, "limit": limit}).mappings()]


def alert(engine: sa.Engine, alert_id: int) -> dict[str, Any] | None:
    with engine.connect() as c:
        row = c.execute(sa.text("SELECT * FROM alert WHERE id = :id"), {"id": alert_id}).mappings().first()
    return dict(row) if row else None


# ----------------------------------------------------------------------------------- reconciliation

class ReconciliationLine(msgspec.Struct, frozen=True, kw_only=True):
    """One account in a run (contract §5); money as strings at the currency's scale."""

    account_id: str
    ledger_balance: str | None
    engine_balance: str | None
    difference: str | None  # engine − ledger
    ledger_status: str | None
    engine_status: str | None
    result: str  # matched | break | engine_unavailable | unknown_account | status_mismatch


class ReconciliationRun(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    counts: dict[str, int]  # result -> accounts
    problems: tuple[ReconciliationLine, ...]  # every line whose result is not `matched`


RunsReader = Callable[[sa.Engine, int], "list[ReconciliationRun] | None"]


def _read_runs(engine: sa.Engine, limit: int) -> list[ReconciliationRun] | None:
    """None while there is no reconciliation table (the page then says so); the reconciliation work
    plugs its own reader in with `use_reconciliation_reader`."""
    with engine.connect() as c:
        exists = c.execute(sa.text("SELECT to_regclass('reconciliation_run') IS NOT NULL")).scalar_one()
    return [] if exists else None


_reader: RunsReader = _read_runs


def use_reconciliation_reader(reader: RunsReader) -> None:
    global _reader
    _reader = reader


def reconciliation_runs(engine: sa.Engine, limit: int = 20) -> list[ReconciliationRun] | None:
    """The latest runs, newest first, each with its breaks; None when reconciliation is not set up."""
    return _reader(engine, max(1, min(limit, RUNS_LIMIT_MAX)))
