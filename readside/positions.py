"""An investor's open positions, from the engine's trades, and what part of each day's true-up is unrealised.

Positions: the trades recorded `open` (contract §4: an open trade is recorded with its quantity and entry price, not
booked), grouped per symbol and side (`buy` → long, `sell` → short): total quantity, average entry price weighted
by quantity (Σ quantity × price ÷ Σ quantity, half-even to `PRICE_PLACES`), opened at (the earliest open trade's
execution time), and how many trades. The contract's rules decide what is open: a trade closed twice is one
closed trade (one entry), and a close that arrived before its open leaves the trade closed (the later open changes
nothing) — so neither is a position.

True-ups, where the engine's daily snapshot allows it (a `daily.performance` for the day): the engine's result of
the day is its closing − opening balance − the day's flows; the realised part is the closed trades the ledger
booked for the day; what remains of the engine's result is **unrealised** (marked to market: open positions
moving, and whatever else the engine counts that no trade reported). The true-up booked for the day (engine
closing − the ledger's balance before it) is that unrealised part plus **carried**: what the ledger's opening of
the day already differed from the engine's (a fact booked on the ledger only — an adjustment, a late trade's
offset — or one the engine never reported as a trade). A day without a snapshot has no such split.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal

import msgspec
import sqlalchemy as sa

from ledger import Ledger, chart
from ledger.errors import InvalidEntry, UnknownAccount
from ledger.money import Money
from ledger.policies.flows import flow_sql
from ledger.times import end_of_day, rfc3339, start_of_day

PRICE_PLACES = 8
DAYS_DEFAULT = 7
DAYS_MAX = 366


class Position(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    side: str  # long (buy) or short (sell)
    quantity: Decimal
    average_entry_price: Decimal
    opened_at: datetime
    trades: int


class TrueUpDay(msgspec.Struct, frozen=True, kw_only=True):
    """One day with the engine's snapshot: its true-up split into the unrealised and the carried part."""

    date: date
    engine_opening: Money
    engine_closing: Money
    flows: Money
    engine_result: Money  # engine closing − opening − flows
    realised: Money  # closed trades booked for the day
    unrealised: Money  # engine_result − realised: marked to market
    true_up: Money  # booked for the day (engine closing − ledger balance before it); 0 when none was needed
    carried: Money  # true_up − unrealised: the ledger's opening already differed from the engine's
    true_up_entry_id: int | None


class Positions(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    currency: str
    as_of: datetime
    positions: tuple[Position, ...]
    open_trades: int
    days: tuple[TrueUpDay, ...]  # the last `days` days that have a snapshot, newest first


def _price(value: Decimal) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-PRICE_PLACES), rounding=ROUND_HALF_EVEN)


def positions(ledger: Ledger, account_id: str, *, days: int = DAYS_DEFAULT) -> Positions:
    """A's open positions now and the true-up split of its last `days` days with a snapshot."""
    if not 1 <= days <= DAYS_MAX:
        raise InvalidEntry(f"days must be from 1 to {DAYS_MAX}")
    with ledger.engine.connect() as c:
        c.execution_options(isolation_level="REPEATABLE READ")
        head = c.execute(sa.text(f"""
            SELECT a.currency, l.id AS ledger_id, now() AS now
              FROM investment_account a JOIN ledger_account l ON l.name = {chart.investors_sql("a.account_id")}
             WHERE a.account_id = :a"""), {"a": account_id}).first()  # noqa: S608 — ledger.chart's constants
        if head is None:
            raise UnknownAccount(f"investment account {account_id!r} does not exist")
        rows = c.execute(sa.text("""
            SELECT symbol, side, sum(quantity) AS quantity, sum(quantity * entry_price) AS cost,
                   min(executed_at) AS opened_at, count(*) AS trades
              FROM trade WHERE account_id = :a AND status = 'open'
             GROUP BY symbol, side ORDER BY symbol, side"""), {"a": account_id}).all()
        snapshots = c.execute(sa.text("""
            SELECT date, opening_balance_minor, closing_balance_minor, ledger_balance_minor, true_up_entry_id
              FROM daily_performance WHERE account_id = :a ORDER BY date DESC LIMIT :n"""),
            {"a": account_id, "n": days}).all()
        by_day: dict[date, tuple[int, int]] = {}
        if snapshots:
            first, last = snapshots[-1].date, snapshots[0].date
            # + to the investor (investors:A is credit-normal): realised trades and flows per UTC day.
            for r in c.execute(sa.text(f"""
                SELECT (p.effective_at AT TIME ZONE 'UTC')::date AS day,
                       COALESCE(sum(CASE p.side WHEN 'C' THEN p.amount_minor ELSE -p.amount_minor END)
                                FILTER (WHERE e.kind = 'trade' OR r.kind = 'trade'), 0)::bigint AS realised,
                       COALESCE(sum(CASE p.side WHEN 'C' THEN p.amount_minor ELSE -p.amount_minor END)
                                FILTER (WHERE {flow_sql("e", "r")}), 0)::bigint AS flows
                  FROM posting p JOIN journal_entry e ON e.id = p.entry_id
                  LEFT JOIN journal_entry r ON r.id = e.reverses_entry_id
                 WHERE p.ledger_account_id = :id AND p.effective_at >= :start AND p.effective_at <= :end
                 GROUP BY 1"""), {"id": head.ledger_id, "start": start_of_day(first),  # noqa: S608 — constants
                                  "end": end_of_day(last)}):
                by_day[r.day] = (int(r.realised), int(r.flows))
    currency = head.currency

    def money(minor: int) -> Money:
        return Money(minor=minor, currency=currency)

    out_days = []
    for s in snapshots:
        realised, flows = by_day.get(s.date, (0, 0))
        result = s.closing_balance_minor - s.opening_balance_minor - flows
        true_up = s.closing_balance_minor - s.ledger_balance_minor
        out_days.append(TrueUpDay(
            date=s.date, engine_opening=money(s.opening_balance_minor), engine_closing=money(s.closing_balance_minor),
            flows=money(flows), engine_result=money(result), realised=money(realised),
            unrealised=money(result - realised), true_up=money(true_up), carried=money(true_up - (result - realised)),
            true_up_entry_id=s.true_up_entry_id))
    found = tuple(Position(symbol=r.symbol, side="long" if r.side == "buy" else "short", quantity=r.quantity,
                           average_entry_price=_price(r.cost / r.quantity) if r.quantity else Decimal(0),
                           opened_at=r.opened_at.astimezone(UTC), trades=r.trades) for r in rows)
    return Positions(account_id=account_id, currency=currency, as_of=head.now.astimezone(UTC), positions=found,
                     open_trades=sum(p.trades for p in found), days=tuple(out_days))


def positions_out(p: Positions) -> dict[str, object]:
    """As JSON (the API's body, the CLI's --format json): quantities and prices as decimal strings."""
    return {"account_id": p.account_id, "currency": p.currency, "as_of": rfc3339(p.as_of),
            "open_trades": p.open_trades,
            "positions": [{"symbol": x.symbol, "side": x.side, "quantity": f"{x.quantity.normalize():f}",
                           "average_entry_price": f"{x.average_entry_price:f}", "opened_at": rfc3339(x.opened_at),
                           "trades": x.trades} for x in p.positions],
            "true_ups": [{"date": d.date.isoformat(), "engine_opening": str(d.engine_opening),
                          "engine_closing": str(d.engine_closing), "flows": str(d.flows),
                          "engine_result": str(d.engine_result), "realised": str(d.realised),
                          "unrealised": str(d.unrealised), "true_up": str(d.true_up), "carried": str(d.carried),
                          "true_up_entry_id": d.true_up_entry_id} for d in p.days]}

