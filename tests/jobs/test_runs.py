"""Each run once per period, whatever the schedulers and workers; the timetable; engine health and /ready."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal

from apscheduler.schedulers.background import BackgroundScheduler
from litestar.testing import TestClient

from api.app import create_app
from integration import health, runs
from integration.booking import Bookkeeper
from integration.events import PerformanceData
from jobs import actors, context, scheduler
from jobs import broker as job_broker
from service.runtime import Runtime
from simulator import Faults, Simulator, Target
from tests.jobs.conftest import SINCE, Db, Jobs, alerts_of, engine_client, open_known_account

SENDS = 6


def send_at_once(send, times: int = SENDS) -> None:
    """`times` enqueues of the same message at the same moment, as several schedulers would."""
    with ThreadPoolExecutor(times) as pool:
        list(pool.map(lambda _: send(), range(times)))


def test_same_period_enqueued_many_times_at_once_is_done_once(db: Db, sim: Simulator, runtime: Runtime,
                                                              jobs: Jobs) -> None:
    setup = engine_client(sim)
    accounts = [open_known_account(db, setup, since=SINCE, account_id=f"once-{n}") for n in range(4)]
    sim.set_faults(Faults(slow=Target(routes=("status",)), slow_s=0.1))  # a reconciliation that takes a while
    for account_id in accounts:  # a month to distribute (each closes March at 1,100.00) and a break (engine 1,000)
        Bookkeeper(db.ledger).book_performance(PerformanceData(
            account_id=account_id, date=date(2025, 3, 31), opening_balance=Decimal("1000.00"),
            closing_balance=Decimal("1100.00"), daily_return=Decimal("100.00"), trades_executed=0,
            winning_trades=0, losing_trades=0))
    jobs.start_worker(threads=4)  # two workers, eight threads: the copies really run side by side

    send_at_once(scheduler.enqueue_reconcile)
    send_at_once(lambda: actors.distribute.send("2025-03"))
    send_at_once(lambda: actors.sync_performance.send("2025-03-01"))
    jobs.drain()

    today = datetime.now(UTC).date().isoformat()
    found = {r.run_key: (r.status, r.attempts) for r in
             (runs.get(db.engine, key) for key in (f"reconcile:{today}", "distribute:2025-03",
                                                   "sync_performance:2025-03-01"))}
    assert found == {f"reconcile:{today}": ("done", 1), "distribute:2025-03": ("done", 1),
                     "sync_performance:2025-03-01": ("done", 1)}
    assert db.scalar("SELECT count(*) FROM job_run") == 3
    assert db.scalar("SELECT count(*) FROM reconciliation_result") == len(accounts)
    assert [(a.kind, a.account_id) for a in alerts_of(db)] == [("reconciliation_break", a) for a in accounts]
    assert db.scalar("SELECT count(*) FROM distribution") == len(accounts)
    assert db.scalar("SELECT count(*) FROM journal_entry WHERE kind = 'fee'") == len(accounts)
    assert db.scalar("SELECT count(*) FROM outbox_event WHERE payload->>'reason' = 'performance_fee'") == len(accounts)


def test_timetable_matches_the_issue() -> None:
    jobs = BackgroundScheduler(timezone="UTC")
    scheduler.add_jobs(jobs)

    def next_fires(job_id: str, after: datetime, count: int = 3) -> list[str]:
        trigger, fires, at = jobs.get_job(job_id).trigger, [], after
        for _ in range(count):
            at = trigger.get_next_fire_time(None, at)
            fires.append(f"{at:%m-%d %H:%M}")
            at = at.replace(second=1)
        return fires

    eve = datetime(2026, 3, 31, 23, 58, tzinfo=UTC)
    assert next_fires("sync_performance", eve) == ["04-01 00:30", "04-02 00:30", "04-03 00:30"]
    assert next_fires("reconcile", eve) == ["04-01 01:00", "04-02 01:00", "04-03 01:00"]
    assert next_fires("check_engine_health", eve) == ["04-01 00:00", "04-01 00:05", "04-01 00:10"]
    assert next_fires("distribute", eve) == ["04-01 02:00", "05-01 02:00", "06-01 02:00"]
    assert next_fires("sync_performance_catch_up", eve, 2) == ["04-01 01:30", "04-01 02:30"]
    assert next_fires("reconcile_catch_up", eve, 2) == ["04-01 02:00", "04-01 03:00"]
    assert next_fires("distribute_catch_up", eve, 2) == ["04-02 02:00", "04-03 02:00"]
    assert next_fires("checkpoint_balances", eve, 2) == ["04-01 00:10", "04-02 00:10"]
    assert next_fires("anchor_books", eve, 2) == ["04-01 00:20", "04-02 00:20"]
    assert next_fires("issue_statements", eve, 2) == ["04-01 03:00", "04-02 03:00"]
    assert sorted(j.id for j in jobs.get_jobs()) == sorted([
        "deliver_outbox", "notify_alerts", "sync_performance", "reconcile", "check_engine_health", "distribute",
        "checkpoint_balances", "anchor_books", "issue_statements", "sync_performance_catch_up", "reconcile_catch_up",
        "distribute_catch_up", "expire_holds"])


def test_engine_health_feeds_ready_and_alerts_after_repeated_failures(db: Db, sim: Simulator, runtime: Runtime,
                                                                      jobs: Jobs) -> None:
    # Checks come every 5 minutes, longer than the client's breaker stays open (60 s): each check is a real
    # call. Here checks come every few milliseconds, so the breaker's reset time is cut to keep that true.
    client = engine_client(sim, breaker_reset_timeout_ms=20)
    context.install(runtime, client)
    app = create_app(db.ledger, runtime.settings, readiness=job_broker.readiness(jobs.broker), jobs=actors.enqueue)

    def ready() -> dict:
        with TestClient(app=app) as client:
            answer = client.get("/api/v1/ready")
        assert answer.status_code == 200, answer.text  # the engine's health informs; it does not make us unready
        return answer.json()["checks"]

    def check(slot: str) -> None:
        time.sleep(0.03)  # the point: the breaker's reset time (20 ms) runs out, so each check really calls
        actors.check_engine_health.send(slot)
        jobs.drain()

    assert ready()["engine_health"] == "unknown"
    check("2026-01-01T00:00Z")
    assert ready()["engine_health"] == "ok"

    sim.set_faults(Faults(error=Target(routes=("health",))))
    for minute in ("05", "10"):
        check(f"2026-01-01T00:{minute}Z")
    check("2026-01-01T00:10Z")  # a second scheduler's copy of the same slot: not a third failure
    assert health.read(db.engine).consecutive_failures == 2
    assert ready()["engine_health"].startswith("failing: 2 checks in a row")
    assert alerts_of(db, kind="engine_unhealthy") == []
    check("2026-01-01T00:15Z")
    check("2026-01-01T00:20Z")
    raised = alerts_of(db, kind="engine_unhealthy")
    assert [a.status for a in raised] == ["open"]  # raised at the third failure, once
    assert ready()["engine_health"].startswith("failing: 4 checks in a row")

    sim.set_faults(Faults())
    check("2026-01-01T00:25Z")
    assert ready()["engine_health"] == "ok"
    assert [a.status for a in alerts_of(db, kind="engine_unhealthy")] == ["resolved"]
    assert ready()["engine_circuit"] == "closed"
    client.shutdown()


def test_readiness_says_a_broker_that_does_not_answer_is_unavailable() -> None:
    unreachable = job_broker.make_broker("amqp://guest:guest@127.0.0.1:9/")  # nothing listens on port 9
    try:
        assert job_broker.probe(unreachable).startswith("unavailable: ")
    finally:
        unreachable.close()
