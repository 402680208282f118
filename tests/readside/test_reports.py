"""Finance reports against the real database: figures by hand, and agreement with the trial balance and verify."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from ledger import InvalidEntry, Ledger, Money, UnknownAccount, rules
from ledger.verify import verify
from readside import reports
from tests.readside.support import sums_as_of, totals_as_of, whole_trial_balance


def usd(text: str) -> Money:
    return Money.from_decimal(text, "USD")


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), UTC)


def book(ledger: Ledger, draft) -> int:
    return ledger.post(draft).entry_id


def history(ledger: Ledger, account_id: str, d0: date) -> None:
    """d0 deposit 1000 · d1 +100 · d2 deposit 900, −200 · d3 +360 · d4 withdraw 160, deposit 50 (reversed now)."""
    d1, d2, d3, d4 = (d0 + timedelta(days=i) for i in range(1, 5))
    key = f"{account_id}:h"
    book(ledger, rules.deposit(account_id, usd("1000"), idempotency_key=f"{key}:1", effective_at=at(d0, 10)))
    book(ledger, rules.gain_or_loss("trade", account_id, usd("100"), idempotency_key=f"{key}:2",
                                    effective_at=at(d1, 12)))
    book(ledger, rules.deposit(account_id, usd("900"), idempotency_key=f"{key}:3", effective_at=at(d2, 9)))
    book(ledger, rules.gain_or_loss("trade", account_id, usd("-200"), idempotency_key=f"{key}:4",
                                    effective_at=at(d2, 15)))
    book(ledger, rules.gain_or_loss("trade", account_id, usd("360"), idempotency_key=f"{key}:5",
                                    effective_at=at(d3, 11)))
    book(ledger, rules.withdrawal(account_id, usd("160"), idempotency_key=f"{key}:6", effective_at=at(d4, 8)))
    mistaken = book(ledger, rules.deposit(account_id, usd("50"), idempotency_key=f"{key}:7", effective_at=at(d4, 9)))
    ledger.reverse(mistaken, reason="wrong account")  # effective now: a flow out today, not a loss


def test_performance_by_hand(ledger: Ledger, open_account, engine: sa.Engine) -> None:
    account_id = open_account(None)
    d0 = datetime.now(UTC).date() - timedelta(days=10)
    history(ledger, account_id, d0)
    with engine.begin() as c:  # the engine's snapshot for d1; closed trades recorded for d3
        c.execute(sa.text("""
            INSERT INTO daily_performance (account_id, date, opening_balance_minor, closing_balance_minor, daily_return,
                trades_executed, winning_trades, losing_trades, ledger_balance_minor)
            VALUES (:a, :d, 100000, 110000, 0.1, 3, 2, 1, 110000)"""), {"a": account_id, "d": d0 + timedelta(days=1)})
        for pnl in (40000, 1000, -4000):
            c.execute(sa.text("""
                INSERT INTO trade (trade_id, account_id, symbol, side, quantity, entry_price, exit_price,
                                   profit_loss_minor, status, executed_at, trade_date)
                VALUES (:t, :a, 'EURUSD', 'buy', 1, 1, 1, :pnl, 'closed', :at, :d)"""),
                {"t": uuid.uuid4().hex, "a": account_id, "pnl": pnl, "at": at(d0 + timedelta(days=3), 11),
                 "d": d0 + timedelta(days=3)})

    p = reports.performance(ledger.engine, account_id, d0, d0 + timedelta(days=4))
    assert [str(d.opening_balance) for d in p.days] == ["0.00", "1000.00", "1100.00", "1800.00", "2160.00"]
    assert [str(d.flows) for d in p.days] == ["1000.00", "0.00", "900.00", "0.00", "-110.00"]
    assert [str(d.profit) for d in p.days] == ["0.00", "100.00", "-200.00", "360.00", "0.00"]
    assert [str(d.closing_balance) for d in p.days] == ["1000.00", "1100.00", "1800.00", "2160.00", "2050.00"]
    assert [d.daily_return for d in p.days] == [Decimal("0E-8"), Decimal("0.1"), Decimal("-0.1"), Decimal("0.2"),
                                                Decimal(0)]
    assert p.time_weighted_return == Decimal("0.18800000")  # 1.1 × 0.9 × 1.2 − 1
    assert p.max_drawdown == Decimal("0.10000000")  # from 1.1 down to 0.99
    assert [str(d.index) for d in p.days] == ["1.00000000", "1.10000000", "0.99000000", "1.18800000", "1.18800000"]
    assert (str(p.opening_balance), str(p.net_flows), str(p.profit), str(p.closing_balance)) == (
        "0.00", "1790.00", "260.00", "2050.00")
    d1, d3 = p.days[1], p.days[3]
    assert (d1.trades_executed, d1.winning_trades, d1.losing_trades, d1.trades_source) == (3, 2, 1, "engine")
    assert str(d1.engine_closing_balance) == "1100.00"
    assert (d3.trades_executed, d3.winning_trades, d3.losing_trades, d3.trades_source) == (3, 2, 1, "ledger")
    assert p.days[0].trades_source is None
    # Every closing balance is the ledger's own balance as of that day's end.
    for d in p.days:
        assert d.closing_balance == ledger.balance(account_id, reports.end_of_day(d.date))

    # Up to today: the reversal of the mistaken deposit is a flow out today, not a loss.
    whole = reports.performance(ledger.engine, account_id, d0)
    assert whole.end == datetime.now(UTC).date() and len(whole.days) == 11
    assert (str(whole.days[-1].flows), str(whole.days[-1].profit), str(whole.closing_balance)) == (
        "-50.00", "0.00", "2000.00")
    assert whole.time_weighted_return == Decimal("0.18800000")

    # A sub-period starts from the ledger's balance: its return compounds only its own days.
    part = reports.performance(ledger.engine, account_id, d0 + timedelta(days=2), d0 + timedelta(days=3))
    assert str(part.opening_balance) == "1100.00"
    assert part.time_weighted_return == Decimal("0.08000000")  # 0.9 × 1.2 − 1
    assert part.max_drawdown == Decimal("0.10000000")


def test_performance_defaults_and_limits(ledger: Ledger, open_account) -> None:
    account_id = open_account("500.00")
    p = reports.performance(ledger.engine, account_id)
    today = datetime.now(UTC).date()
    assert p.end == today and p.start == today  # not before the account's first posting
    assert str(p.closing_balance) == "500.00" and p.time_weighted_return == Decimal("0E-8")
    quarter = reports.performance(ledger.engine, account_id, today - timedelta(days=3), today + timedelta(days=60))
    assert quarter.end == today and len(quarter.days) == 4  # the future is not reported as flat days
    with pytest.raises(UnknownAccount):
        reports.performance(ledger.engine, "no-such-account")
    with pytest.raises(InvalidEntry):
        reports.performance(ledger.engine, account_id, today, today - timedelta(days=1))
    with pytest.raises(InvalidEntry):
        reports.performance(ledger.engine, account_id, today - timedelta(days=reports.PERFORMANCE_DAYS_MAX), today)


def test_trial_balance_pages_and_totals_match_the_postings(ledger: Ledger, open_account) -> None:
    open_account("123.45")
    ledger.post(rules.gain_or_loss("trade", open_account("50.00"), usd("-7.25"), idempotency_key=f"tb:{uuid.uuid4()}",
                                   effective_at=datetime.now(UTC) - timedelta(days=1)))
    for as_of in (None, datetime.now(UTC) - timedelta(days=3), datetime.now(UTC) - timedelta(hours=1)):
        page = reports.trial_balance(ledger.engine, as_of)
        assert {c: (d.minor, cr.minor) for c, (d, cr) in page.totals.items()} == totals_as_of(ledger.engine, as_of)
        assert page.balanced
        rows, cursor = [], None
        while True:
            part = reports.trial_balance(ledger.engine, as_of, after=cursor, limit=7)
            assert part.totals == page.totals  # totals always cover every account
            assert len(part.rows) == 7 or part.next_cursor is None  # a short page is the last one
            rows += part.rows
            cursor = part.next_cursor
            if cursor is None:
                break
        oracle = sums_as_of(ledger.engine, as_of)
        assert [r.account for r in rows] == sorted(oracle)
        assert {r.account: r.debit.minor - r.credit.minor for r in rows} == oracle
        assert all(r.debit.minor >= 0 and r.credit.minor >= 0 and not (r.debit.minor and r.credit.minor) for r in rows)


def test_whole_trial_balance_in_one_read_is_every_page(ledger: Ledger, open_account) -> None:
    """limit=None (the command line's report): the rows of every page and the same totals, with no next page."""
    open_account("10.00")
    as_of = datetime.now(UTC) - timedelta(hours=1)
    whole = reports.trial_balance(ledger.engine, as_of, limit=None)
    paged = whole_trial_balance(ledger.engine, as_of)
    assert whole.next_cursor is None and whole.totals == paged.totals
    assert whole.rows == paged.rows and len(whole.rows) == len(sums_as_of(ledger.engine, as_of))
    part = reports.trial_balance(ledger.engine, as_of, after=whole.rows[0].account, limit=None)
    assert part.rows == whole.rows[1:] and part.next_cursor is None


def test_balance_sheet_balances_and_agrees_with_the_trial_balance(ledger: Ledger, open_account) -> None:
    account_id = open_account("1000.00")
    ledger.post(rules.performance_fee(account_id, usd("25.00"), idempotency_key=f"{account_id}:fee",
                                      effective_at=None))
    sheet = reports.balance_sheet(ledger.engine)
    tb = whole_trial_balance(ledger.engine)
    assert sheet.balanced
    for c in sheet.currencies:
        assets = sum(r.debit.minor - r.credit.minor for r in tb.rows if r.currency == c.currency and r.type == "asset")
        liabilities = sum(r.credit.minor - r.debit.minor for r in tb.rows
                          if r.currency == c.currency and r.type == "liability")
        income = sum(r.credit.minor - r.debit.minor for r in tb.rows
                     if r.currency == c.currency and r.type in ("income", "expense"))
        assert (c.total_assets.minor, c.total_liabilities.minor, c.retained_earnings.minor) == (
            assets, liabilities, income)
    usd_sheet = next(c for c in sheet.currencies if c.currency == "USD")
    assert {line.group for line in usd_sheet.assets} >= {"assets:custody", "assets:platform-cash"}
    assert usd_sheet.retained_earnings.minor >= 2500


def test_income_statement_counts_only_its_period(ledger: Ledger, open_account) -> None:
    account_id = open_account("1000.00")
    # A moment nobody else books at: a random second in 2003.
    moment = datetime(2003, 1, 1, tzinfo=UTC) + timedelta(seconds=uuid.uuid4().int % (300 * 86400))
    ledger.post(rules.performance_fee(account_id, usd("12.34"), idempotency_key=f"{account_id}:fee",
                                      effective_at=moment))
    inside = reports.income_statement(ledger.engine, moment, moment)
    usd_income = next(c for c in inside.currencies if c.currency == "USD")
    assert str(usd_income.total_income) == "12.34" and str(usd_income.net_income) == "12.34"
    assert [line.account for line in usd_income.income] == ["income:performance-fees:USD"]
    before = reports.income_statement(ledger.engine, moment - timedelta(seconds=10), moment - timedelta(microseconds=1))
    assert str(next(c for c in before.currencies if c.currency == "USD").net_income) == "0.00"
    everything = reports.income_statement(ledger.engine, None, None)
    sheet = reports.balance_sheet(ledger.engine)
    for c in everything.currencies:  # all income to date = the balance sheet's retained earnings
        assert c.net_income == next(s.retained_earnings for s in sheet.currencies if s.currency == c.currency)
    with pytest.raises(InvalidEntry):
        reports.income_statement(ledger.engine, moment, moment - timedelta(days=1))


def test_reports_never_disagree_with_verify(ledger: Ledger, engine: sa.Engine) -> None:
    assert verify(engine).ok
    assert reports.trial_balance(ledger.engine).balanced and reports.balance_sheet(ledger.engine).balanced


def test_the_planner_knows_how_many_account_groups_there_are(ledger: Ledger, engine: sa.Engine,
                                                             open_account) -> None:
    """The balance sheet groups every ledger account by `reports.ACCOUNT_GROUP`; the statistics of migration
    0007 are on that expression, so the planner expects the real number of groups, not one per account
    (it then hashes 200k accounts into a handful of groups instead of sorting them)."""
    for _ in range(60):
        open_account("1.00")
    query = f"SELECT {reports.ACCOUNT_GROUP} AS grp FROM ledger_account a GROUP BY grp"
    with engine.begin() as c:
        c.exec_driver_sql("ANALYZE ledger_account")
        plan = c.execute(sa.text(f"EXPLAIN (FORMAT JSON) {query}")).scalar_one()
        groups = len(c.execute(sa.text(query)).all())
    assert plan[0]["Plan"]["Plan Rows"] == groups
