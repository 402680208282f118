"""`Bookkeeper.book_trades` (the back-fill's batch) books exactly what `book_trade` one by one does.

Two accounts get the same trades, A in one batch and B one by one: open and closed trades, a trade opened
and closed in the same batch, one booked before (a duplicate), one closed again with another profit (a
conflict for review), one with a profit finer than cents (refused alone), a zero profit (no entry), and
trades before a day the engine already trued up (each needs its offset). Their books, trade rows and
alerts must be the same, line by line.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import sqlalchemy as sa

from integration.booking import Booking, Bookkeeper
from integration.events import PerformanceData, TradeData
from ledger import Ledger
from ledger.errors import InvalidAmount, LedgerError

TODAY = datetime.now(UTC).date()
SNAPSHOT_DAY = TODAY - timedelta(days=3)


def _trade(account_id: str, name: str, status: str, day: date, hour: int, pnl: str | None) -> TradeData:
    return TradeData(trade_id=f"{account_id}-{name}", account_id=account_id, symbol="BTCUSDT", side="buy",
                     quantity=Decimal("0.5"), entry_price=Decimal("100"), status=status,  # type: ignore[arg-type]
                     executed_at=datetime.combine(day, time(hour), UTC),
                     exit_price=Decimal("101") if status == "closed" else None,
                     profit_loss=Decimal(pnl) if pnl is not None else None)


def _plan(account_id: str) -> tuple[list[TradeData], list[TradeData]]:
    """(booked before, the batch)."""
    before, after = SNAPSHOT_DAY - timedelta(days=1), SNAPSHOT_DAY + timedelta(days=1)
    booked = [_trade(account_id, "dup", "closed", after, 9, "12.50"),
              _trade(account_id, "conflict", "closed", after, 10, "3.00"),
              _trade(account_id, "was-open", "open", after, 8, None)]
    batch = [
        _trade(account_id, "late-1", "closed", before, 10, "-40.00"),  # before the trued-up day: offset
        _trade(account_id, "same-day", "closed", SNAPSHOT_DAY, 23, "7.25"),  # on it: offset too
        _trade(account_id, "dup", "closed", after, 9, "12.50"),
        _trade(account_id, "conflict", "closed", after, 10, "3.50"),
        _trade(account_id, "fine", "closed", after, 11, "0.001"),
        _trade(account_id, "zero", "closed", after, 12, "0"),
        _trade(account_id, "was-open", "closed", after, 13, "5.00"),
        _trade(account_id, "both", "open", after, 14, None),
        _trade(account_id, "both", "closed", after, 15, "-2.00"),
        _trade(account_id, "both", "closed", after, 15, "-2.00"),
        _trade(account_id, "after", "closed", after, 16, "100.00"),
    ]
    return booked, batch


def _books(engine: sa.Engine, account_id: str) -> dict[str, list[tuple]]:
    """Everything booked for the account, with its own id replaced so two accounts can be compared (the
    opening deposit's time is "now", so it is left out)."""
    def strip(value: object) -> object:
        return value.replace(account_id, "X") if isinstance(value, str) else value

    with engine.connect() as c:
        entries = c.execute(sa.text("""
            SELECT e.kind, e.idempotency_key, CASE WHEN e.kind = 'deposit' THEN NULL ELSE e.effective_at END,
                   e.memo, p.side, p.amount_minor, p.seq, p.late,
                   p.balance_after_minor
              FROM journal_entry e JOIN posting p ON p.entry_id = e.id
              JOIN ledger_account a ON a.id = p.ledger_account_id
             WHERE a.name = 'liabilities:investors:' || :a ORDER BY p.seq"""), {"a": account_id}).all()
        trades = c.execute(sa.text("""
            SELECT t.trade_id, t.status, t.profit_loss_minor, t.executed_at, t.source, e.idempotency_key
              FROM trade t LEFT JOIN journal_entry e ON e.id = t.entry_id
             WHERE t.account_id = :a ORDER BY t.trade_id"""), {"a": account_id}).all()
        alerts = c.execute(sa.text("""SELECT kind, dedup_key, message FROM alert WHERE account_id = :a
                                       ORDER BY dedup_key"""), {"a": account_id}).all()
    return {name: [tuple(strip(v) for v in row) for row in rows]
            for name, rows in (("entries", entries), ("trades", trades), ("alerts", alerts))}


def test_a_batch_books_what_one_by_one_books(ledger: Ledger, engine: sa.Engine,
                                             open_account: Callable[..., str]) -> None:
    bookkeeper = Bookkeeper(ledger)
    one_by_one, batched = open_account("1000.00"), open_account("1000.00")
    answers: dict[str, list[Booking | LedgerError]] = {}
    for account_id in (one_by_one, batched):
        booked, batch = _plan(account_id)
        for trade in booked:
            bookkeeper.book_trade(trade, source="webhook")
        bookkeeper.book_performance(PerformanceData(
            account_id=account_id, date=SNAPSHOT_DAY, opening_balance=Decimal("1000.00"),
            closing_balance=Decimal("1000.00"), daily_return=Decimal("0"), trades_executed=0, winning_trades=0,
            losing_trades=0))
        if account_id == batched:
            answers[account_id] = bookkeeper.book_trades(account_id, batch)
        else:
            answers[account_id] = []
            for trade in batch:
                try:
                    answers[account_id].append(bookkeeper.book_trade(trade))
                except LedgerError as error:
                    answers[account_id].append(error)

    assert _books(engine, batched) == _books(engine, one_by_one)
    by_name = dict(zip([t.trade_id.removeprefix(batched + "-") for t in _plan(batched)[1]], answers[batched],
                       strict=False))
    assert isinstance(by_name["fine"], InvalidAmount)
    assert isinstance(by_name["conflict"], Booking) and by_name["conflict"].review
    assert isinstance(by_name["dup"], Booking) and by_name["dup"].duplicate
    assert isinstance(by_name["zero"], Booking) and by_name["zero"].entry_ids == ()
    for name in ("late-1", "same-day"):  # the trade's entry and its offset
        assert isinstance(by_name[name], Booking) and len(by_name[name].entry_ids) == 2
    # deposit, true-up (the deposit is effective today, after the snapshot), 2 booked before; the batch:
    # 2 trades with their offsets, was-open, both, after
    assert len(_books(engine, batched)["entries"]) == 1 + 1 + 2 + 2 * 2 + 3
    assert [type(a) for a in answers[batched]] == [type(a) for a in answers[one_by_one]]
    assert [(a.duplicate, a.review.replace(batched, "X"), len(a.entry_ids))
            for a in answers[batched] if isinstance(a, Booking)] == \
           [(a.duplicate, a.review.replace(one_by_one, "X"), len(a.entry_ids))
            for a in answers[one_by_one] if isinstance(a, Booking)]
