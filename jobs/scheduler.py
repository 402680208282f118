"""The scheduler: enqueues actors on a timetable (APScheduler; it only enqueues, workers do the work).

APScheduler 3 is maintained, runs cron expressions in UTC, and works both in-process (inside `serve`)
and standalone (`invledger scheduler`). Running two schedulers is safe: every job is idempotent for its
period (see jobs/actors.py), so a second enqueue finds the period's run already done.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

log = logging.getLogger("jobs.scheduler")
OUTBOX_INTERVAL_S = 5
ALERTS_INTERVAL_S = 30
MISFIRE_GRACE_S = 10 * 60


def _enqueue(actor_name: str, *args) -> None:
    from jobs import actors

    actor = next(a for a in actors.ALL if a.actor_name == actor_name)
    actor.send(*args)


def enqueue_sync() -> None:
    """Yesterday's performance sync; the period is fixed now, when enqueued, not when a worker gets to it."""
    _enqueue("sync_performance", (datetime.now(UTC).date() - timedelta(days=1)).isoformat())


def enqueue_reconcile() -> None:
    _enqueue("reconcile", datetime.now(UTC).date().isoformat())


def enqueue_health() -> None:
    from integration import health

    _enqueue("check_engine_health", health.slot())


def enqueue_distribute() -> None:
    from ledger.distribution import month_key, previous_month

    _enqueue("distribute", month_key(previous_month(datetime.now(UTC).date().replace(day=1))))


def add_jobs(scheduler: BackgroundScheduler | BlockingScheduler) -> None:
    """The timetable (UTC). The daily and monthly jobs fire again later as catch-ups: each is a no-op once
    its period's run is done, and takes up a run that failed, was cut short or is `partial`."""
    scheduler.add_job(_enqueue, "interval", seconds=OUTBOX_INTERVAL_S, args=["deliver_outbox"],
                      id="deliver_outbox", max_instances=1, coalesce=True)
    scheduler.add_job(_enqueue, "interval", seconds=ALERTS_INTERVAL_S, args=["notify_alerts"],
                      id="notify_alerts", max_instances=1, coalesce=True)
    periodic = {"max_instances": 1, "coalesce": True, "misfire_grace_time": MISFIRE_GRACE_S}
    # 00:30 yesterday's performance sync and trade back-fill (seed §6.1); hourly catch-up at :30.
    scheduler.add_job(enqueue_sync, "cron", minute=30, id="sync_performance", **periodic)
    # 01:00 nightly reconciliation; hourly catch-up until 23:00.
    scheduler.add_job(enqueue_reconcile, "cron", hour="1-23", minute=0, id="reconcile", **periodic)
    # Every 5 minutes: engine health (seed §10.1).
    scheduler.add_job(enqueue_health, "cron", minute="*/5", id="check_engine_health", **periodic)
    # The 1st at 02:00: the previous month's distribution; daily catch-up at 02:00 (deferred accounts).
    scheduler.add_job(enqueue_distribute, "cron", hour=2, minute=0, id="distribute", **periodic)


def background() -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    add_jobs(scheduler)
    return scheduler


def blocking() -> BlockingScheduler:
    scheduler = BlockingScheduler(timezone="UTC")
    add_jobs(scheduler)
    return scheduler
