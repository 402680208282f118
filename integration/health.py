"""Engine health (seed §10.1): a check every 5 minutes, kept in `engine_health`, for /ready and one alert.

One check per 5-minute slot, however many schedulers enqueue it: the slot is claimed with one UPDATE
(`period IS DISTINCT FROM :slot`) before the engine is called. After `FAILURES_ALERT_MIN` failed checks in
a row an `engine_unhealthy` alert is raised (once, while it stays open); the first good check resolves it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from integration import alerts
from integration.client import EngineClient, EngineError

log = logging.getLogger("integration.health")
FAILURES_ALERT_MIN = 3
SLOT_MINUTES = 5
ALERT_KEY = "engine:health"


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # unknown | ok | failing
    consecutive_failures: int
    checked_at: datetime | None
    last_ok_at: datetime | None
    detail: str
    checked: bool = True  # False: this slot was already checked by another worker


def slot(now: datetime | None = None) -> str:
    """The 5-minute slot a time falls in, e.g. "2026-11-24T10:05Z"."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{at:%Y-%m-%dT%H}:{at.minute - at.minute % SLOT_MINUTES:02d}Z"


def read(engine: sa.Engine) -> Health:
    with engine.connect() as c:
        row = c.execute(sa.text("""
            SELECT status, consecutive_failures, checked_at, last_ok_at, detail FROM engine_health WHERE id = 1""")
                        ).mappings().first()
    if row is None:
        return Health(status="unknown", consecutive_failures=0, checked_at=None, last_ok_at=None, detail="",
                      checked=False)
    return Health(**row, checked=False)


def readiness(engine: sa.Engine) -> str:
    """For /ready: "ok", "unknown" (never checked), or "failing: N checks in a row (detail)"."""
    try:
        health = read(engine)
    except Exception as error:  # noqa: BLE001 — readiness must answer even when this read fails
        return f"unknown: {type(error).__name__}"
    if health.status == "failing":
        return f"failing: {health.consecutive_failures} checks in a row ({health.detail[:200]})"
    return health.status


def check(engine: sa.Engine, client: EngineClient, *, period: str | None = None) -> Health:
    """Check the engine once for `period` (default: the current slot); a no-op if that slot was checked."""
    period = period or slot()
    with engine.begin() as c:
        claimed = c.execute(sa.text("""
            UPDATE engine_health SET period = :p WHERE id = 1 AND period IS DISTINCT FROM :p RETURNING id"""),
            {"p": period}).first()
    if claimed is None:
        return msgspec.structs.replace(read(engine), checked=False)
    try:
        answer = client.health()
        ok, detail = True, answer.status
    except EngineError as error:
        ok, detail = False, error.detail
    with engine.begin() as c:
        row: dict[str, Any] = dict(c.execute(sa.text("""
            UPDATE engine_health
               SET status = CASE WHEN :ok THEN 'ok' ELSE 'failing' END,
                   consecutive_failures = CASE WHEN :ok THEN 0 ELSE consecutive_failures + 1 END,
                   checked_at = now(), last_ok_at = CASE WHEN :ok THEN now() ELSE last_ok_at END,
                   detail = :detail
             WHERE id = 1
            RETURNING status, consecutive_failures, checked_at, last_ok_at, detail"""),
            {"ok": ok, "detail": detail[:500]}).mappings().one())
        if ok:
            alerts.resolve_alert(c, ALERT_KEY)
        elif row["consecutive_failures"] >= FAILURES_ALERT_MIN:
            alerts.raise_alert(c, kind="engine_unhealthy", dedup_key=ALERT_KEY,
                               message=f"the ML Engine failed {row['consecutive_failures']} health checks in a row: "
                                       f"{detail[:300]}", details={"since_ok": str(row["last_ok_at"])})
    if not ok:
        log.error("ML Engine health check failed", extra={"detail": detail[:300],
                                                           "in_a_row": row["consecutive_failures"]})
    return Health(**row)
