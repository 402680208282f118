"""The scheduler: enqueues actors on a timetable (APScheduler; it only enqueues, workers do the work).

APScheduler 3 is maintained, runs cron expressions in UTC, and works both in-process (inside `serve`)
and standalone (`invledger scheduler`); periodiq would tie us to a dramatiq middleware and offers no
in-process mode without a broker.

The timetable (UTC), as the issue and contract §8 ask:
- 00:30 daily: performance sync and trade back-fill of yesterday;
- 01:00 daily: reconciliation of every open account;
- every 5 minutes: engine health;
- the 1st of each month, 02:00: the previous month's distribution;
- 00:10 daily: the month-end balance checkpoints that are due (one on the 1st; a no-op on other days
  unless one was missed, so it is its own catch-up);
- 00:20 daily: an anchor of the hash chains (integration/anchors.py; an extra one is harmless, so a missed
  day is taken up by the next);
- continuously: outbox delivery (every 5 s) and alert notifications (every 30 s).

Catch-ups. Each daily and monthly job is enqueued again later, for the *same period*: sync hourly at :30
until 23:30 (still yesterday), reconciliation hourly until 23:00 (still today's run), distribution daily at
02:00 (still the previous month). A catch-up is a no-op once its period's run is `done` (the run key
`job:period` is unique in `job_run`, and a run holds an advisory lock while it works — integration/runs.py);
it only takes up a run that failed, was cut short, or is `partial` (accounts the engine did not answer for,
distributions deferred for a missing snapshot). So running two schedulers, or a catch-up racing the
main slot, does each period's work once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

log = logging.getLogger("jobs.scheduler")
OUTBOX_INTERVAL_S = 5
ALERTS_INTERVAL_S = 30
HOLDS_INTERVAL_S = 30
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


CATCH_UP = "catch_up"


def add_jobs(scheduler: BackgroundScheduler | BlockingScheduler) -> None:
    """The timetable of the module docstring: each periodic job at its time, then its catch-ups."""
    scheduler.add_job(_enqueue, "interval", seconds=OUTBOX_INTERVAL_S, args=["deliver_outbox"],
                      id="deliver_outbox", max_instances=1, coalesce=True)
    scheduler.add_job(_enqueue, "interval", seconds=ALERTS_INTERVAL_S, args=["notify_alerts"],
                      id="notify_alerts", max_instances=1, coalesce=True)
    scheduler.add_job(_enqueue, "interval", seconds=HOLDS_INTERVAL_S, args=["expire_holds"],
                      id="expire_holds", max_instances=1, coalesce=True)
    periodic = {"max_instances": 1, "coalesce": True, "misfire_grace_time": MISFIRE_GRACE_S}
    scheduler.add_job(enqueue_sync, "cron", hour=0, minute=30, id="sync_performance", **periodic)
    scheduler.add_job(enqueue_reconcile, "cron", hour=1, minute=0, id="reconcile", **periodic)
    scheduler.add_job(enqueue_health, "cron", minute="*/5", id="check_engine_health", **periodic)
    scheduler.add_job(enqueue_distribute, "cron", day=1, hour=2, minute=0, id="distribute", **periodic)
    scheduler.add_job(_enqueue, "cron", hour=0, minute=20, args=["anchor_books"], id="anchor_books", **periodic)
    # After the distribution (which also sends it when it finishes): last month's statements not yet issued, and
    # corrected statements wherever a back-dated fact changed an issued month.
    scheduler.add_job(_enqueue, "cron", hour=3, minute=0, args=["issue_statements"], id="issue_statements",
                      **periodic)
    scheduler.add_job(_enqueue, "cron", hour=0, minute=10, args=["checkpoint_balances"], id="checkpoint_balances",
                      **periodic)
    scheduler.add_job(enqueue_sync, "cron", hour="1-23", minute=30, id=f"sync_performance_{CATCH_UP}", **periodic)
    scheduler.add_job(enqueue_reconcile, "cron", hour="2-23", minute=0, id=f"reconcile_{CATCH_UP}", **periodic)
    scheduler.add_job(enqueue_distribute, "cron", day="2-31", hour=2, minute=0, id=f"distribute_{CATCH_UP}",
                      **periodic)


def background() -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    add_jobs(scheduler)
    return scheduler


def blocking() -> BlockingScheduler:
    scheduler = BlockingScheduler(timezone="UTC")
    add_jobs(scheduler)
    return scheduler
