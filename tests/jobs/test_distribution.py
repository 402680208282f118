"""Monthly distribution (performance fee above the high-water mark), with hand-computed examples.

Every account below has a fee rate of 20 % and 1,000.00 of capital deposited on 2025-02-01; each month's
result is set by the engine's snapshot for the month's last day (the true-up brings the balance to it).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from integration import runs
from integration.booking import Bookkeeper
from integration.events import PerformanceData
from jobs import actors
from ledger import Money, rules
from ledger.distribution import distributions
from readside import statements as issued
from service.runtime import Runtime
from simulator import Simulator
from tests.jobs.conftest import SINCE, Db, Jobs, cli, engine_client, open_known_account
from tests.waiting import wait_until

MARCH, APRIL, MAY = date(2025, 3, 1), date(2025, 4, 1), date(2025, 5, 1)
LAST_DAY = {MARCH: date(2025, 3, 31), APRIL: date(2025, 4, 30), MAY: date(2025, 5, 31)}


def usd(text: str) -> Money:
    return Money.from_decimal(text, "USD")


def month_closes_at(db: Db, account_id: str, month: date, closing: str) -> None:
    """The engine's snapshot for the month's last day, booked as the webhook (or the back-fill) would."""
    balance = Decimal(str(db.ledger.balance(account_id)))
    Bookkeeper(db.ledger).book_performance(PerformanceData(
        account_id=account_id, date=LAST_DAY[month], opening_balance=balance, closing_balance=Decimal(closing),
        daily_return=Decimal(closing) - balance, trades_executed=0, winning_trades=0, losing_trades=0))


def move(db: Db, account_id: str, kind: str, amount: str, day: date) -> None:
    draft = getattr(rules, kind)(account_id, usd(amount), idempotency_key=f"{account_id}:{kind}:{day}",
                                 effective_at=datetime(day.year, day.month, day.day, 12, tzinfo=UTC))
    db.ledger.post(draft)


def distribute(jobs: Jobs, month: date) -> None:
    actors.distribute.send(f"{month:%Y-%m}")
    jobs.drain()


def figures(db: Db, account_id: str) -> list[tuple[str, ...]]:
    """(month, opening, closing, flows, profit, opening HWM, fee, new HWM) of each distribution."""
    return [(f"{d.month:%Y-%m}", *(str(d.money(f)) for f in ("opening_balance_minor", "closing_balance_minor",
                                                               "net_flows_minor", "profit_minor",
                                                               "opening_hwm_minor", "fee_minor", "new_hwm_minor")))
            for d in distributions(db.ledger, account_id)]


def test_fee_above_the_high_water_mark_net_of_flows(db: Db, sim: Simulator, runtime: Runtime, jobs: Jobs) -> None:
    setup = engine_client(sim)
    gainer, depositor, withdrawer = (open_known_account(db, setup, since=SINCE, account_id=f"dist-{n}")
                                     for n in ("gainer", "depositor", "withdrawer"))
    # March. gainer: +100 → fee 20.00 on 1,100 − 1,000; mark 1,080 (the balance after the fee).
    month_closes_at(db, gainer, MARCH, "1100.00")
    # depositor: 500 in on the 15th, closes at 1,600: profit 100 (not 600), mark 1,000 + 500 → fee 20.00.
    move(db, depositor, "deposit", "500.00", date(2025, 3, 15))
    month_closes_at(db, depositor, MARCH, "1600.00")
    # withdrawer: 300 out on the 10th, closes at 750: profit 50 (not −250), mark 1,000 − 300 → fee 10.00.
    move(db, withdrawer, "withdrawal", "300.00", date(2025, 3, 10))
    month_closes_at(db, withdrawer, MARCH, "750.00")

    distribute(jobs, MARCH)
    run = runs.get(db.engine, "distribute:2025-03")
    assert run.status == "done"
    assert {k: run.counts[k] for k in ("accounts", "booked", "fees", "deferred", "failed")} == {
        "accounts": 3, "booked": 3, "fees": 3, "deferred": 0, "failed": 0}
    assert run.counts["fee_total"] == {"USD": "50.00"}
    assert figures(db, gainer) == [("2025-03", "1000.00", "1100.00", "0.00", "100.00", "1000.00", "20.00", "1080.00")]
    assert figures(db, depositor) == [("2025-03", "1000.00", "1600.00", "500.00", "100.00", "1000.00", "20.00",
                                       "1580.00")]
    assert figures(db, withdrawer) == [("2025-03", "1000.00", "750.00", "-300.00", "50.00", "1000.00", "10.00",
                                        "740.00")]
    assert db.ledger.balance(gainer) == usd("1080.00")
    assert db.ledger.ledger_account_balance("income:performance-fees:USD") == usd("50.00")
    # The distribution sent the month's statements (issue_statements, drained with it): the fee and the mark.
    march = issued.statement(db.ledger, gainer, MARCH)
    assert march is not None and march.version == 1
    assert {k: march.body["figures"][k] for k in ("opening_balance", "performance_fee", "high_water_mark_before",
                                                  "high_water_mark_after", "closing_balance")} == {
        "opening_balance": "1000.00", "performance_fee": "-20.00", "high_water_mark_before": "1000.00",
        "high_water_mark_after": "1080.00", "closing_balance": "1080.00"}
    assert march.body["statement"]["issued_by"] == "job:issue_statements"

    # The fee entry records its inputs, and the engine hears of the capital leaving through the outbox.
    fee_entry = db.ledger.entry(distributions(db.ledger, gainer)[0].entry_id)
    assert fee_entry.effective_at == datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert {k: fee_entry.metadata[k] for k in ("opening_hwm", "profit", "rate", "computed_fee", "new_hwm")} == {
        "opening_hwm": "1000.00", "profit": "100.00", "rate": "0.200000", "computed_fee": "20.00",
        "new_hwm": "1080.00"}
    notices = db.rows("SELECT payload FROM outbox_event WHERE account_id = :a AND topic = 'account.capital_changed'",
                      a=gainer)
    assert [(n.payload["operation"], n.payload["amount"], n.payload["new_total_capital"]) for n in notices] == [
        ("withdrawal", "20.00", "1080.00")]
    actors.deliver_outbox.send()
    jobs.drain()
    wait_until(lambda: sim.state()["accounts"][gainer]["capital"] == Decimal("980.00"), what="the engine's capital")

    # April, a loss month: no fee, the mark stays. May, a recovery still below the mark: no fee.
    month_closes_at(db, gainer, APRIL, "1000.00")
    month_closes_at(db, gainer, MAY, "1050.00")
    distribute(jobs, APRIL)
    assert figures(db, gainer)[1] == ("2025-04", "1080.00", "1000.00", "0.00", "-80.00", "1080.00", "0.00", "1080.00")
    assert distributions(db.ledger, gainer)[1].entry_id is None
    for account_id in (depositor, withdrawer):  # no April snapshot: deferred, with an alert, and the run partial
        assert len(figures(db, account_id)) == 1
    assert runs.get(db.engine, "distribute:2025-04").status == "partial"
    assert db.scalar("SELECT count(*) FROM alert WHERE kind = 'distribution_deferred' AND status = 'open'") == 2

    done = cli(db, None, "distribute", "--month", "2025-05")
    assert done.returncode == 1  # May of the deferred accounts must wait for their April
    assert "distributed 3/3 accounts" in done.stderr
    assert figures(db, gainer)[2] == ("2025-05", "1000.00", "1050.00", "0.00", "50.00", "1080.00", "0.00", "1080.00")
    assert db.ledger.balance(gainer) == usd("1050.00")

    # Exactly once per account and month: the scheduler and the CLI running March again book nothing.
    entries, notices_count = (db.scalar("SELECT count(*) FROM journal_entry"),
                              db.scalar("SELECT count(*) FROM outbox_event"))
    distribute(jobs, MARCH)
    assert runs.get(db.engine, "distribute:2025-03").attempts == 1
    again = cli(db, None, "distribute", "--month", "2025-03")
    assert again.returncode == 0, again.stderr
    assert "booked 0" in again.stdout and "already 3" in again.stdout
    assert (db.scalar("SELECT count(*) FROM journal_entry"), db.scalar("SELECT count(*) FROM outbox_event")) == (
        entries, notices_count)
    assert db.scalar("SELECT count(*) FROM investor_statement WHERE account_id = :a AND month = :m", a=gainer,
                     m=MARCH) == 1  # and the statements sent again found nothing changed
    assert db.ledger.ledger_account_balance("income:performance-fees:USD") == usd("50.00")


def test_cli_distribute_refuses_what_it_should(db: Db) -> None:
    not_over = cli(db, None, "distribute", "--month", f"{datetime.now(UTC):%Y-%m}")
    assert not_over.returncode == 1 and "not over yet" in not_over.stderr
    bad = cli(db, None, "distribute", "--month", "2025-13")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    for command in ("distribute", "reconcile", "sync-performance", "worker", "scheduler"):
        helped = cli(db, None, command, "--help")
        assert helped.returncode == 0 and "usage: invledger" in helped.stdout
    assert "--month" in cli(db, None, "distribute", "--help").stdout
