"""dramatiq actors: small, idempotent, taking ids not objects; the work lives in integration/ and ledger/."""

from __future__ import annotations

import logging
from datetime import timedelta

import dramatiq
import dramatiq.broker
from dramatiq.brokers.stub import StubBroker

from integration import outbox
from jobs import context
from service import metrics

log = logging.getLogger("jobs.actors")

# Declare on an in-process broker unless one is installed: dramatiq's default would connect to RabbitMQ
# at import time. jobs.broker.install() re-binds every actor to the configured broker.
if dramatiq.broker.global_broker is None:
    dramatiq.set_broker(StubBroker())


@dramatiq.actor(queue_name="ledger", max_retries=0, time_limit=10 * 60 * 1000)
def deliver_outbox() -> None:
    """Deliver every notification that is due. Safe to run on many workers at once (SKIP LOCKED)."""
    from integration.notify import sender

    rt = context.runtime()
    stats = outbox.deliver_pending(rt.engine, sender(context.engine_client()))
    for result in ("delivered", "failed", "dead"):
        if getattr(stats, result):
            metrics.OUTBOX_DELIVERIES.labels(result).inc(getattr(stats, result))
    if stats.delivered or stats.failed or stats.dead:
        log.info("outbox delivered", extra=msgspec_to_dict(stats))


def msgspec_to_dict(value) -> dict:
    import msgspec

    return msgspec.structs.asdict(value)


# Periodic jobs. Each takes its period as a string (a day, a month, a run key) and is idempotent for it:
# integration.runs records one run per period and lets one worker at a time do it (see docs/design.md, Jobs).
PERIODIC_TIME_LIMIT_MS = 60 * 60 * 1000
STALE_QUEUED = timedelta(minutes=15)  # an on-demand run not started by then is sent again (its message was lost)


def _bookkeeper():
    from integration.booking import Bookkeeper

    rt = context.runtime()
    return Bookkeeper(rt.ledger, adjustment_alert_threshold=rt.settings.adjustment_alert_threshold)


def _log_outcome(job: str, outcome) -> None:
    run = outcome.run
    log.info(f"{job}: " + (f"skipped ({outcome.skipped})" if outcome.skipped else (run.status if run else "?")),
             extra={"run_key": run.run_key if run else None, "counts": run.counts if run else None})


@dramatiq.actor(queue_name="ledger", max_retries=3, time_limit=PERIODIC_TIME_LIMIT_MS)
def sync_performance(day: str | None = None) -> None:
    """Performance sync and trade back-fill for `day` (YYYY-MM-DD; default yesterday, UTC)."""
    from datetime import UTC, date, datetime, timedelta

    from integration import sync

    rt = context.runtime()
    target = date.fromisoformat(day) if day else datetime.now(UTC).date() - timedelta(days=1)
    _log_outcome("sync_performance", sync.run(rt.ledger, context.engine_client(), _bookkeeper(), target))


@dramatiq.actor(queue_name="ledger", max_retries=3, time_limit=PERIODIC_TIME_LIMIT_MS)
def reconcile(period: str | None = None, run_key: str | None = None, trigger: str = "schedule") -> None:
    """Reconcile every open account: the nightly run of `period` (YYYY-MM-DD, default today), or the run
    recorded under `run_key` (an operator's on-demand run)."""
    from datetime import UTC, datetime

    from integration import reconcile as reconciliation
    from integration import runs

    rt = context.runtime()
    period = period or datetime.now(UTC).date().isoformat()
    outcome = reconciliation.run(rt.ledger, context.engine_client(), run_key=run_key or f"reconcile:{period}",
                                 period=period, trigger=trigger,  # type: ignore[arg-type]
                                 tolerance=rt.settings.reconciliation_tolerance)
    _log_outcome("reconcile", outcome)
    if trigger == "schedule":  # hourly (the catch-ups): take up on-demand runs whose message was lost
        for stale in runs.stale_queued(rt.engine, "reconcile", trigger="api", older_than=STALE_QUEUED):
            log.warning("reconcile: on-demand run still queued, sending it again", extra={"run_key": stale.run_key})
            reconcile.send(period=stale.period, run_key=stale.run_key, trigger="api")


@dramatiq.actor(queue_name="ledger", max_retries=0, time_limit=5 * 60 * 1000)
def check_engine_health(period: str | None = None) -> None:
    """One engine health check per 5-minute slot (`period`, default the current one)."""
    from integration import health

    result = health.check(context.runtime().engine, context.engine_client(), period=period)
    if result.checked:
        log.info("engine health", extra={"status": result.status, "in_a_row": result.consecutive_failures})


@dramatiq.actor(queue_name="ledger", max_retries=3, time_limit=PERIODIC_TIME_LIMIT_MS)
def distribute(month: str | None = None) -> None:
    """The monthly distribution of `month` (YYYY-MM; default the previous month)."""
    from datetime import UTC, datetime

    from integration import distribute as distribution
    from ledger.distribution import month_key, month_of, previous_month

    rt = context.runtime()
    target = month_of(month) if month else previous_month(datetime.now(UTC).date().replace(day=1))
    outcome = distribution.run(rt.ledger, target)
    _log_outcome(f"distribute {month_key(target)}", outcome)
    if outcome.run is not None and outcome.run.status in ("done", "partial"):
        issue_statements.send(month=month_key(target))  # the statements of every account distributed so far


@dramatiq.actor(queue_name="ledger", max_retries=3, time_limit=PERIODIC_TIME_LIMIT_MS)
def issue_statements(month: str | None = None) -> None:
    """Issue the investor statements of `month` (YYYY-MM; default the previous month) for every account distributed
    in it, then a corrected statement wherever the books changed an issued month. Idempotent: a statement the books
    still agree with is left as it is (documents/statements.py)."""
    from datetime import UTC, datetime

    from documents import statements
    from ledger.distribution import month_key, month_of, previous_month

    rt = context.runtime()
    target = month_of(month) if month else previous_month(datetime.now(UTC).date().replace(day=1))
    counts = statements.issue_month(rt.ledger, target)
    corrections = statements.issue_corrections(rt.ledger)
    log.info(f"statements {month_key(target)}", extra={"counts": msgspec_to_dict(counts),
                                                        "corrections": msgspec_to_dict(corrections)})


@dramatiq.actor(queue_name="ledger", max_retries=3, time_limit=PERIODIC_TIME_LIMIT_MS)
def checkpoint_balances() -> None:
    """Make every month-end balance checkpoint that is due (ledger/checkpoints.py); none most days."""
    from ledger import checkpoints

    for at, rows in checkpoints.make_due(context.runtime().ledger):
        log.info("balance checkpoint made", extra={"at": at.isoformat(), "accounts": rows})


@dramatiq.actor(queue_name="ledger", max_retries=0, time_limit=5 * 60 * 1000)
def notify_alerts() -> None:
    """Send alerts not yet sent to ALERT_WEBHOOK_URL (kept and retried on the next tick if it fails)."""
    from integration import alerts

    rt = context.runtime()
    sent = alerts.notify_pending(rt.engine, rt.settings.alert_webhook_url)
    if sent:
        log.info("alerts sent", extra={"sent": sent})


@dramatiq.actor(queue_name="ledger", max_retries=3, time_limit=PERIODIC_TIME_LIMIT_MS)
def anchor_books() -> None:
    """Sign the hash-chain heads (integration/anchors.py): daily, and whenever it runs (an anchor is cheap)."""
    from integration import anchors

    rt = context.runtime()
    key = anchors.audit_key(rt.settings.audit_key, rt.settings.data_dir)
    anchors.anchor(rt.engine, key, data_dir=rt.settings.data_dir, alert_url=rt.settings.alert_webhook_url,
                   made_by="job:anchor_books")


@dramatiq.actor(queue_name="ledger", max_retries=0, time_limit=5 * 60 * 1000)
def expire_holds() -> None:
    """Void every withdrawal hold past its expiry (ledger/holds.py), releasing its funds; idempotent per hold."""
    from ledger import holds

    expired = holds.expire_due(context.runtime().ledger)
    if expired:
        log.info("withdrawal holds expired", extra={"holds": [h.hold_id for h in expired]})


ALL = [deliver_outbox, sync_performance, reconcile, check_engine_health, distribute, issue_statements,
       checkpoint_balances, notify_alerts, anchor_books, expire_holds]


def enqueue(actor_name: str, **kwargs) -> None:
    """Send a message to the actor named `actor_name` (for callers that must not import actors: the API)."""
    actor = next(a for a in ALL if a.actor_name == actor_name)
    actor.send_with_options(kwargs=kwargs)
