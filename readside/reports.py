"""Finance reports: pure reads over the ledger tables (plain SQL), every figure derived from postings.

Each report reads one consistent snapshot (a REPEATABLE READ transaction), so its parts agree with each
other even while entries are being booked. Balances as of a time use `ledger_balances_as_of` (every
account: from the nearest month-end balance checkpoint plus the postings in between, or a few index reads
per account, whichever reads less; migrations 0004 and 0005) and `ledger_balance_as_of` (one account, a
few index reads), so a report costs O(accounts) or O(days), never O(all postings).

Every report takes the engine to read from (the primary's, or a read replica's): no global. The shapes
the doors show (JSON bodies, CSV rows) are `readside.tabular`'s; the doors call `readside.views`.

Returns and drawdowns are `Decimal`s computed at 28 significant digits and rounded half-even to
`RETURN_PLACES` (8) decimal places only when they are reported; money stays integer minor units.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import msgspec
import sqlalchemy as sa

from ledger import chart
from ledger.errors import InvalidEntry, UnknownAccount
from ledger.model import AccountType
from ledger.money import Money
from ledger.policies.flows import flow_sql
from ledger.returns import RETURN_PLACES, rounded  # noqa: F401 — RETURN_PLACES: the reports' precision
from ledger.times import end_of_day, just_before, start_of_day

PAGE_LIMIT_MAX = 1000
# Reports sort, hash and aggregate every ledger account: with the default 4MB they spill to disk at 100k
# accounts (the as-of balances' own function asks for as much, migration 0005).
REPORT_WORK_MEM = "64MB"
# A ledger account's group on the balance sheet: the first two parts of its name (`assets:custody`). The
# planner knows how many groups there are from statistics on this very expression (migration 0007).
ACCOUNT_GROUP = "split_part(a.name, ':', 1) || ':' || split_part(a.name, ':', 2)"
PERFORMANCE_DAYS_MAX = 1830  # five years of daily rows in one answer; longer periods are refused
PERFORMANCE_DAYS_DEFAULT = 90


# ------------------------------------------------------------------------------------------- values

class TrialBalanceLine(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    type: AccountType
    currency: str
    debit: Money
    credit: Money


class TrialBalancePage(msgspec.Struct, frozen=True, kw_only=True):
    """Rows by account name, `limit` at a time; `totals` always cover every ledger account."""

    as_of: datetime
    rows: tuple[TrialBalanceLine, ...]
    totals: dict[str, tuple[Money, Money]]  # currency -> (debits, credits)
    next_cursor: str | None

    @property
    def balanced(self) -> bool:
        return all(debit == credit for debit, credit in self.totals.values())


class SheetLine(msgspec.Struct, frozen=True, kw_only=True):
    """One group of ledger accounts (e.g. `liabilities:investors`): its balance in the normal sign."""

    group: str
    accounts: int  # ledger accounts in the group with a balance other than zero
    balance: Money


class CurrencySheet(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    assets: tuple[SheetLine, ...]
    liabilities: tuple[SheetLine, ...]
    equity: tuple[SheetLine, ...]
    retained_earnings: Money  # income − expenses to date: the equity the books have earned
    total_assets: Money
    total_liabilities: Money
    total_equity: Money  # equity accounts + retained earnings

    @property
    def balanced(self) -> bool:
        return self.total_assets == self.total_liabilities + self.total_equity


class BalanceSheet(msgspec.Struct, frozen=True, kw_only=True):
    as_of: datetime
    currencies: tuple[CurrencySheet, ...]

    @property
    def balanced(self) -> bool:
        return all(c.balanced for c in self.currencies)


class IncomeLine(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    type: AccountType
    amount: Money  # the period's change in the normal sign (income: credits − debits; expenses: the reverse)


class CurrencyIncome(msgspec.Struct, frozen=True, kw_only=True):
    currency: str
    income: tuple[IncomeLine, ...]
    expenses: tuple[IncomeLine, ...]
    total_income: Money
    total_expenses: Money
    net_income: Money


class IncomeStatement(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime | None  # None: from the first entry
    end: datetime
    currencies: tuple[CurrencyIncome, ...]


class PerformanceDay(msgspec.Struct, frozen=True, kw_only=True):
    """One UTC day of an investor's account, from the ledger; the engine's snapshot where there is one.

    `profit` = closing − opening − flows. `daily_return` = profit / (opening + flows): flows are taken
    to arrive at the start of the day; None when that capital is zero or negative (no return defined,
    counted as 0 in the time-weighted return). `index` is the growth of 1 since the period's start;
    `drawdown` is how far `index` is below its running peak (0 at a new high).
    """

    date: date
    opening_balance: Money
    flows: Money
    profit: Money
    closing_balance: Money
    daily_return: Decimal | None
    index: Decimal
    drawdown: Decimal
    trades_executed: int | None
    winning_trades: int | None
    losing_trades: int | None
    trades_source: str | None  # "engine" (daily snapshot), "ledger" (closed trades recorded), None
    engine_closing_balance: Money | None
    engine_daily_return: Decimal | None


class Performance(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    currency: str
    start: date
    end: date
    opening_balance: Money
    net_flows: Money
    profit: Money
    closing_balance: Money
    time_weighted_return: Decimal  # product of (1 + daily_return) − 1, rounded to RETURN_PLACES
    max_drawdown: Decimal  # the largest fall of the index from a running peak, as a fraction of the peak
    days: tuple[PerformanceDay, ...]


# ------------------------------------------------------------------------------------------ reading

@contextmanager
def _snapshot(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One read-only REPEATABLE READ transaction: every query of a report sees the same books."""
    with engine.connect() as connection:
        connection.execution_options(isolation_level="REPEATABLE READ")
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        connection.exec_driver_sql(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'")
        try:
            yield connection
        finally:
            connection.rollback()


def _aware(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    if at.tzinfo is None:
        raise InvalidEntry(f"time {at.isoformat()} has no time zone; give it in UTC")
    return at.astimezone(UTC)


def _accounts(at: datetime | None) -> str:
    """`ledger_account a` with `b`, its debits − credits: the cached balance now, or as of `:at`
    (`ledger_balances_as_of`: from the nearest balance checkpoint or by probing each account, whichever
    reads less; migrations 0004 and 0005)."""
    if at is None:
        return "ledger_account a CROSS JOIN LATERAL (SELECT a.balance_minor) AS s(b)"
    return ("ledger_account a JOIN ledger_balances_as_of(CAST(:at AS timestamptz)) AS s(id, b) ON s.id = a.id")


def _limit(limit: int) -> int:
    return max(1, min(int(limit), PAGE_LIMIT_MAX))


def trial_balance(engine: sa.Engine, as_of: datetime | None = None, *, after: str | None = None,
                  limit: int | None = PAGE_LIMIT_MAX) -> TrialBalancePage:
    """Every ledger account's balance as a debit or a credit, by name, after the account name `after`.

    `limit` None: every row in this one read (the command line's whole report) — page by page, each page would
    compute every account's balance again for its totals, and read the books at another moment than the first.
    """
    at = _aware(as_of)
    size = None if limit is None else _limit(limit)
    with _snapshot(engine) as c:
        now = c.execute(sa.text("SELECT now()")).scalar_one()
        # The page's rows, then a total row per currency. As of a time, the balances are computed once
        # (the costly part); now, each part reads the cached balances itself (cheaper than keeping them).
        # The page's names come from their index and meet the balances by id: carrying 200k names through
        # the balances and sorting them cost a quarter of the report (390 against 300 ms at 10M postings).
        found = c.execute(sa.text(f"""
            WITH s AS {"MATERIALIZED" if at else "NOT MATERIALIZED"} (
                 SELECT a.id, a.currency, s.b FROM {_accounts(at)}),
            page AS (SELECT a.id, a.name, a.type FROM ledger_account a
                      WHERE CAST(:after AS text) IS NULL OR a.name > :after ORDER BY a.name LIMIT :limit)
            (SELECT 0 AS part, p.name, p.type, s.currency, s.b AS balance_minor, NULL::bigint AS debit,
                    NULL::bigint AS credit
               FROM page p JOIN s ON s.id = p.id)
            UNION ALL
            SELECT 1, NULL, NULL, currency, NULL, COALESCE(sum(GREATEST(b, 0)), 0)::bigint,
                   COALESCE(sum(GREATEST(-b, 0)), 0)::bigint
              FROM s GROUP BY currency
             ORDER BY part, name, currency"""),  # noqa: S608 — module constants
            {"at": at, "after": after, "limit": None if size is None else size + 1}).all()
    rows = [r for r in found if r.part == 0]
    totals_rows = [r for r in found if r.part == 1]
    more = size is not None and len(rows) > size
    rows = rows[:size]
    lines = tuple(TrialBalanceLine(
        account=r.name, type=r.type, currency=r.currency,
        debit=Money(minor=max(r.balance_minor, 0), currency=r.currency),
        credit=Money(minor=max(-r.balance_minor, 0), currency=r.currency)) for r in rows)
    totals = {r.currency: (Money(minor=int(r.debit), currency=r.currency),
                           Money(minor=int(r.credit), currency=r.currency)) for r in totals_rows}
    return TrialBalancePage(as_of=at or now, rows=lines, totals=totals,
                            next_cursor=rows[-1].name if more else None)


def balance_sheet(engine: sa.Engine, as_of: datetime | None = None) -> BalanceSheet:
    """Assets = liabilities + equity per currency, equity including retained income − expenses."""
    at = _aware(as_of)
    with _snapshot(engine) as c:
        now = c.execute(sa.text("SELECT now()")).scalar_one()
        rows = c.execute(sa.text(f"""
            SELECT currency, type, grp, count(*) FILTER (WHERE b <> 0) AS accounts, COALESCE(sum(b), 0)::bigint AS minor
              FROM (SELECT a.currency, a.type, {ACCOUNT_GROUP} AS grp, s.b FROM {_accounts(at)}) g
             GROUP BY currency, type, grp ORDER BY currency, grp"""), {"at": at}).all()  # noqa: S608 — module constants
    by_currency: dict[str, list[sa.Row]] = {}
    for row in rows:
        by_currency.setdefault(row.currency, []).append(row)
    sheets = []
    for currency, group_rows in sorted(by_currency.items()):
        zero = Money.zero(currency)
        sections: dict[str, list[SheetLine]] = {"asset": [], "liability": [], "equity": []}
        retained = zero
        for row in group_rows:
            normal = Money(minor=int(row.minor) * chart.normal_sign(row.type), currency=currency)
            if row.type in sections:
                sections[row.type].append(SheetLine(group=row.grp, accounts=row.accounts, balance=normal))
            elif row.type == "income":
                retained += normal
            else:  # expense
                retained -= normal
        total = {kind: sum((line.balance for line in lines), zero) for kind, lines in sections.items()}
        sheets.append(CurrencySheet(
            currency=currency, assets=tuple(sections["asset"]), liabilities=tuple(sections["liability"]),
            equity=tuple(sections["equity"]), retained_earnings=retained, total_assets=total["asset"],
            total_liabilities=total["liability"], total_equity=total["equity"] + retained))
    return BalanceSheet(as_of=at or now, currencies=tuple(sheets))


def income_statement(engine: sa.Engine, start: datetime | None, end: datetime | None) -> IncomeStatement:
    """Income and expenses booked with an effective time in [start, end] (None: open on that side)."""
    start, end = _aware(start), _aware(end)
    if start is not None and end is not None and end < start:
        raise InvalidEntry("the period ends before it starts")
    with _snapshot(engine) as c:
        now = c.execute(sa.text("SELECT now()")).scalar_one()
        end = end or now
        rows = c.execute(sa.text("""
            SELECT a.name, a.type, a.currency,
                   ledger_balance_as_of(a.id, CAST(:end AS timestamptz))
                   - CASE WHEN CAST(:before AS timestamptz) IS NULL THEN 0
                          ELSE ledger_balance_as_of(a.id, CAST(:before AS timestamptz)) END AS change_minor
              FROM ledger_account a WHERE a.type IN ('income', 'expense')
             ORDER BY a.currency, a.name"""),
            {"end": end, "before": just_before(start) if start else None}).all()
    by_currency: dict[str, list[sa.Row]] = {}
    for row in rows:
        by_currency.setdefault(row.currency, []).append(row)
    out = []
    for currency, account_rows in sorted(by_currency.items()):
        zero = Money.zero(currency)
        lines = [IncomeLine(account=r.name, type=r.type,
                            amount=Money(minor=int(r.change_minor) * chart.normal_sign(r.type), currency=currency))
                 for r in account_rows]
        income = tuple(line for line in lines if line.type == "income")
        expenses = tuple(line for line in lines if line.type == "expense")
        total_income = sum((line.amount for line in income), zero)
        total_expenses = sum((line.amount for line in expenses), zero)
        out.append(CurrencyIncome(currency=currency, income=income, expenses=expenses, total_income=total_income,
                                  total_expenses=total_expenses, net_income=total_income - total_expenses))
    return IncomeStatement(start=start, end=end, currencies=tuple(out))


def performance(engine: sa.Engine, account_id: str, start: date | None = None, end: date | None = None) -> Performance:
    """Investor performance of A for the UTC days start..end (inclusive), from the ledger's own balances.

    Defaults: `end` today (a later `end` is cut to today), `start` PERFORMANCE_DAYS_DEFAULT − 1 days
    before it but not before A's first posting. Trades won and lost come from the engine's daily snapshot
    where there is one, else from the closed trades recorded for that day.
    """
    with _snapshot(engine) as c:
        head = c.execute(sa.text(f"""
            SELECT a.account_id, a.currency, l.id AS ledger_id, l.type,
                   (SELECT min(p.effective_at) FROM posting p WHERE p.ledger_account_id = l.id) AS first_at,
                   now() AS now
              FROM investment_account a JOIN ledger_account l ON l.name = {chart.investors_sql("a.account_id")}
             WHERE a.account_id = :a"""), {"a": account_id}).first()  # noqa: S608 — ledger.chart's constant
        if head is None:
            raise UnknownAccount(f"investment account {account_id!r} does not exist")
        today = head.now.astimezone(UTC).date()
        end = min(end or today, today)  # days that have not happened yet have no performance
        if start is None:
            start = date.fromordinal(max(1, end.toordinal() - (PERFORMANCE_DAYS_DEFAULT - 1)))
            if head.first_at is not None:
                start = min(end, max(start, head.first_at.astimezone(UTC).date()))
        if end < start:
            raise InvalidEntry("the period ends before it starts")
        days = (end - start).days + 1
        if days > PERFORMANCE_DAYS_MAX:
            raise InvalidEntry(f"a performance period is at most {PERFORMANCE_DAYS_MAX} days; this one is {days}")
        dates = [start + timedelta(days=i) for i in range(days)]
        sign = chart.normal_sign(head.type)
        ats = [just_before(start_of_day(start))] + [end_of_day(d) for d in dates]
        balances = [int(row.b) * sign for row in c.execute(sa.text("""
            SELECT ledger_balance_as_of(:id, t.at) AS b FROM unnest(CAST(:ats AS timestamptz[]))
                   WITH ORDINALITY AS t(at, n) ORDER BY t.n"""), {"id": head.ledger_id, "ats": ats})]
        flows = {row.day: int(row.minor) * sign for row in c.execute(sa.text(f"""
            SELECT (p.effective_at AT TIME ZONE 'UTC')::date AS day,
                   sum(CASE p.side WHEN 'D' THEN p.amount_minor ELSE -p.amount_minor END)::bigint AS minor
              FROM posting p JOIN journal_entry e ON e.id = p.entry_id
              LEFT JOIN journal_entry r ON r.id = e.reverses_entry_id
             WHERE p.ledger_account_id = :id AND p.effective_at >= :start AND p.effective_at <= :end
               AND {flow_sql("e", "r")}
             GROUP BY 1"""), {"id": head.ledger_id, "start": start_of_day(start), "end": end_of_day(end)})}  # noqa: S608 — ledger.policies.flows' constants
        snapshots = {row.date: row for row in c.execute(sa.text("""
            SELECT date, closing_balance_minor, daily_return, trades_executed, winning_trades, losing_trades
              FROM daily_performance WHERE account_id = :a AND date BETWEEN :start AND :end"""),
            {"a": account_id, "start": start, "end": end})}
        trades = {row.trade_date: row for row in c.execute(sa.text("""
            SELECT trade_date, count(*) AS executed, count(*) FILTER (WHERE profit_loss_minor > 0) AS won,
                   count(*) FILTER (WHERE profit_loss_minor < 0) AS lost
              FROM trade WHERE account_id = :a AND status = 'closed' AND trade_date BETWEEN :start AND :end
             GROUP BY trade_date"""), {"a": account_id, "start": start, "end": end})}
    return _performance(account_id, head.currency, dates, balances, flows, snapshots, trades)


def _performance(account_id: str, currency: str, dates: list[date], balances: list[int], flows: dict[date, int],
                 snapshots: dict[date, sa.Row], trades: dict[date, sa.Row]) -> Performance:
    def money(minor: int) -> Money:
        return Money(minor=minor, currency=currency)

    index = peak = Decimal(1)
    max_drawdown = Decimal(0)
    out = []
    for i, day in enumerate(dates):
        opening, closing, flow = balances[i], balances[i + 1], flows.get(day, 0)
        profit = closing - opening - flow
        capital = opening + flow
        daily_return = Decimal(profit) / Decimal(capital) if capital > 0 else None
        index *= 1 + (daily_return or 0)
        peak = max(peak, index)
        drawdown = (peak - index) / peak
        max_drawdown = max(max_drawdown, drawdown)
        snapshot, traded = snapshots.get(day), trades.get(day)
        counts = ((snapshot.trades_executed, snapshot.winning_trades, snapshot.losing_trades, "engine") if snapshot
                  else (traded.executed, traded.won, traded.lost, "ledger") if traded else (None, None, None, None))
        out.append(PerformanceDay(
            date=day, opening_balance=money(opening), flows=money(flow), profit=money(profit),
            closing_balance=money(closing), daily_return=rounded(daily_return) if daily_return is not None else None,
            index=rounded(index), drawdown=rounded(drawdown), trades_executed=counts[0], winning_trades=counts[1],
            losing_trades=counts[2], trades_source=counts[3],
            engine_closing_balance=money(snapshot.closing_balance_minor) if snapshot else None,
            engine_daily_return=Decimal(snapshot.daily_return) if snapshot else None))
    net_flows = sum(flows.get(d, 0) for d in dates)
    return Performance(
        account_id=account_id, currency=currency, start=dates[0], end=dates[-1], opening_balance=money(balances[0]),
        net_flows=money(net_flows), profit=money(balances[-1] - balances[0] - net_flows),
        closing_balance=money(balances[-1]), time_weighted_return=rounded(index - 1),
        max_drawdown=rounded(max_drawdown), days=tuple(out))
