"""The trade rule (ledger.policies.trades): closed, open, closed twice, and the late-fact offset — pure, no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import InvalidAmount
from ledger.policies.trades import RecordedTrade, TradeBooking, TradeConflict, book_trade
from ledger.times import end_of_day
from tests.ledger.policies.support import balanced, investors_change_minor
from tests.strategies import days_around

DAY = date(2026, 11, 2)
AT = datetime.combine(DAY, time(14, 30), UTC)


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """A trade report as the engine's decoded trade carries it (ledger.policies.trades.TradeFacts)."""

    trade_id: str = "t-1"
    account_id: str = "a-1"
    symbol: str = "EURUSD"
    side: str = "buy"
    status: str = "closed"
    executed_at: datetime = AT
    profit_loss: Decimal | None = Decimal("12.50")


def test_a_closed_trade_books_its_profit_or_loss_once() -> None:
    booked = book_trade(Trade(), "USD", None, [])
    assert isinstance(booked, TradeBooking)
    assert (booked.record, booked.profit_loss_minor, booked.duplicate, len(booked.drafts)) == (True, 1250, False, 1)
    (draft,) = booked.drafts
    assert (draft.kind, draft.idempotency_key, draft.effective_at, draft.memo) == (
        "trade", "trade:t-1", AT, "buy EURUSD closed")
    assert draft.metadata == {"trade_id": "t-1", "symbol": "EURUSD"}
    assert balanced(draft) and investors_change_minor(booked.drafts, "a-1") == 1250
    loss = book_trade(Trade(profit_loss=Decimal("-3")), "USD", None, [])
    assert isinstance(loss, TradeBooking) and investors_change_minor(loss.drafts, "a-1") == -300
    # Known as open: now closed, booked and the row updated.
    opened = RecordedTrade("a-1", "open", None, None)
    assert book_trade(Trade(), "USD", opened, []) == msgspec.structs.replace(booked)


def test_a_trade_closed_at_zero_is_recorded_without_an_entry() -> None:
    assert book_trade(Trade(profit_loss=Decimal("0.00")), "USD", None, []) == TradeBooking(record=True,
                                                                                           profit_loss_minor=0)


def test_an_open_trade_is_recorded_not_booked() -> None:
    assert book_trade(Trade(status="open", profit_loss=None), "USD", None, []) == TradeBooking(record=True)
    for status in ("open", "closed"):  # seen before: nothing changes (an open after its close does not reopen it)
        seen = RecordedTrade("a-1", status, 1250 if status == "closed" else None, 7 if status == "closed" else None)
        assert book_trade(Trade(status="open", profit_loss=None), "USD", seen, []) == TradeBooking(duplicate=True)


def test_closed_twice_is_one_entry_and_another_profit_is_a_conflict() -> None:
    seen = RecordedTrade("a-1", "closed", 1250, 42)
    assert book_trade(Trade(), "USD", seen, []) == TradeBooking(duplicate=True, entry_id=42)
    conflict = book_trade(Trade(profit_loss=Decimal("12.51")), "USD", seen, [])
    assert conflict == TradeConflict("trade t-1 closed again with profit_loss 12.51 (first 12.50)")


def test_a_trade_of_another_account_is_a_conflict() -> None:
    seen = RecordedTrade("a-2", "open", None, None)
    assert book_trade(Trade(), "USD", seen, []) == TradeConflict("trade t-1 was reported for account a-2")


def test_a_profit_finer_than_the_currency_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        book_trade(Trade(profit_loss=Decimal("1.005")), "USD", None, [])


@given(st.integers(min_value=-10**9, max_value=10**9).filter(bool), days_around(DAY))
def test_a_trued_up_day_keeps_its_closing_balance(pnl_minor: int, snapshot_days: list[date]) -> None:
    """A late trade is booked (it shows in the statement) and offset at the end of the first trued-up day on or
    after its own: the balance after that day changes by nothing; with no such day, by the profit."""
    booked = book_trade(Trade(profit_loss=Decimal(pnl_minor).scaleb(-2)), "USD", None, snapshot_days)
    assert isinstance(booked, TradeBooking) and all(balanced(d) for d in booked.drafts)
    later = [d for d in snapshot_days if d >= DAY]
    if later:
        trade, offset = booked.drafts
        assert offset.effective_at == end_of_day(later[0]) and offset.kind == "true_up"
        assert offset.idempotency_key == "offset:a-1:trade:t-1"
        assert investors_change_minor([trade], "a-1") == pnl_minor
        assert investors_change_minor(booked.drafts, "a-1") == 0
    else:
        assert len(booked.drafts) == 1 and investors_change_minor(booked.drafts, "a-1") == pnl_minor
    assert DAY - timedelta(days=1) not in later
