"""Performance sync and trade back-fill: what the webhooks missed is booked once, through a real worker and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import msgspec

from integration import runs
from integration.signature import Verified
from integration.webhooks import WebhookProcessor
from jobs import actors
from ledger import Money
from service.runtime import Runtime
from simulator import Simulator
from tests.jobs.conftest import SIM_START, SINCE, Db, Jobs, cli, engine_client, open_known_account

DAY = SIM_START.isoformat()


def closed_trades_of_day(events: list[dict], account_id: str) -> list[dict]:
    return [e for e in events if e["event_type"] == "trade.executed" and e["data"]["account_id"] == account_id
            and e["data"]["status"] == "closed" and e["data"]["executed_at"].startswith(DAY)]


def trade_entries(db: Db) -> int:
    return db.scalar("SELECT count(*) FROM journal_entry WHERE kind = 'trade'")


def closed_trades_booked(db: Db) -> tuple[int, int]:
    """(closed trades recorded, of which back-filled); each with a P&L ≠ 0 has exactly one entry."""
    assert db.scalar("""SELECT count(*) FROM trade WHERE status = 'closed'
                         AND (profit_loss_minor <> 0) <> (entry_id IS NOT NULL)""") == 0
    assert db.scalar("SELECT count(*) FROM trade WHERE entry_id IS NOT NULL") == trade_entries(db)
    return (db.scalar("SELECT count(*) FROM trade WHERE status = 'closed'"),
            db.scalar("SELECT count(*) FROM trade WHERE status = 'closed' AND source = 'backfill'"))


def test_sync_books_what_webhooks_missed_exactly_once(db: Db, sim: Simulator, runtime: Runtime, jobs: Jobs) -> None:
    setup = engine_client(sim)
    some_trades, only_snapshot, nothing = (open_known_account(db, setup, since=SINCE, account_id=f"sync-{n}")
                                           for n in "abc")
    sim.step(1)  # no ledger_url: the webhooks are generated but never sent
    bodies = sim.events()
    events = [msgspec.json.decode(body) for body in bodies]
    closed = {a: closed_trades_of_day(events, a) for a in (some_trades, only_snapshot, nothing)}
    assert all(len(trades) >= 2 for trades in closed.values()), "the walk must close trades on the day"

    # Some webhooks did arrive: half of one account's closed trades, and another account's snapshot only.
    processor = WebhookProcessor(db.ledger)
    arrived = {t["event_id"] for t in closed[some_trades][: len(closed[some_trades]) // 2]}
    arrived |= {e["event_id"] for e in events if e["event_type"] == "daily.performance"
                and e["data"]["account_id"] == only_snapshot}
    for body, event in zip(bodies, events, strict=True):
        if event["event_id"] in arrived:
            assert processor.receive(body, Verified(scheme="ml")).result == "applied"
    booked_before = len(closed[some_trades]) // 2
    assert closed_trades_booked(db) == (booked_before, 0)

    actors.sync_performance.send(DAY)
    jobs.drain()
    run = runs.get(db.engine, f"sync_performance:{DAY}")
    assert run is not None and run.status == "done" and run.trigger == "schedule"
    seen = sum(len(trades) for trades in closed.values())
    filled = seen - booked_before
    assert {k: run.counts[k] for k in ("accounts", "trades_seen", "trades_filled", "trades_already",
                                       "performance_seen", "performance_filled", "performance_already",
                                       "unavailable", "conflicts", "rejected")} == {
        "accounts": 3, "trades_seen": seen, "trades_filled": filled, "trades_already": booked_before,
        "performance_seen": 3, "performance_filled": 2, "performance_already": 1, "unavailable": 0,
        "conflicts": 0, "rejected": 0}
    assert closed_trades_booked(db) == (seen, filled)
    # Who did what: the trades the webhooks brought were the engine's; those the back-fill found, the job's.
    assert {row[0] for row in db.rows("SELECT DISTINCT recorded_by FROM journal_entry WHERE kind = 'trade'")} == {
        "engine", "job:sync_performance"}

    # Exactly once: each account's balance at the end of the day is the engine's closing balance, including
    # the one whose true-up came before the trades it covers.
    state = sim.state()["accounts"]
    end_of_day = datetime.combine(SIM_START + timedelta(days=1), time.min, UTC)
    for account_id in closed:
        engine_capital = Money.from_decimal(Decimal(state[account_id]["capital"]), "USD")
        assert db.ledger.balance(account_id) == engine_capital
        assert db.ledger.balance(account_id, as_of=end_of_day - timedelta(microseconds=1)) == engine_capital

    # The scheduler enqueuing the same day again does nothing; a forced rerun from the CLI books nothing.
    entries = db.scalar("SELECT count(*) FROM journal_entry")
    actors.sync_performance.send(DAY)
    jobs.drain()
    assert runs.get(db.engine, f"sync_performance:{DAY}").attempts == 1
    done = cli(db, sim, "sync-performance", "--date", DAY)
    assert done.returncode == 0, done.stderr
    assert "synced 3/3 accounts" in done.stderr
    assert "trades filled 0" in done.stdout and f"trades already {seen}" in done.stdout
    assert db.scalar("SELECT count(*) FROM journal_entry") == entries
    rerun = runs.get(db.engine, f"sync_performance:{DAY}")
    assert rerun.attempts == 2 and rerun.counts["entries"] == 0


def test_sync_of_an_engine_outage_is_partial_and_taken_up_later(db: Db, sim: Simulator, runtime: Runtime,
                                                                jobs: Jobs) -> None:
    from simulator import Faults, Target

    setup = engine_client(sim)
    reachable, unreachable = (open_known_account(db, setup, since=SINCE, account_id=f"sync-{n}") for n in "ab")
    sim.step(1)
    sim.set_faults(Faults(error=Target(accounts=(unreachable,))))
    actors.sync_performance.send(DAY)
    jobs.drain()
    run = runs.get(db.engine, f"sync_performance:{DAY}")
    assert run.status == "partial" and run.counts["unavailable"] == 1
    assert db.scalar("SELECT count(*) FROM alert WHERE kind = 'sync_incomplete' AND status = 'open'") == 1
    assert db.scalar("SELECT count(*) FROM trade WHERE account_id = :a", a=unreachable) == 0

    sim.set_faults(Faults())
    actors.sync_performance.send(DAY)  # a partial run is taken up again by the next attempt
    jobs.drain()
    run = runs.get(db.engine, f"sync_performance:{DAY}")
    assert (run.status, run.attempts, run.counts["unavailable"]) == ("done", 2, 0)
    assert db.scalar("SELECT count(*) FROM alert WHERE kind = 'sync_incomplete' AND status = 'resolved'") == 1
    state = sim.state()["accounts"]
    for account_id in (reachable, unreachable):
        assert db.ledger.balance(account_id) == Money.from_decimal(Decimal(state[account_id]["capital"]), "USD")
