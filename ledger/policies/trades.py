"""The trade rule (contract §4): a closed trade books its profit or loss once; an open trade is recorded, not booked.

- `open`, never seen: record the trade (no entry). Seen before (open or closed): nothing changes — an open
  arriving after its close does not reopen it.
- `closed` with profit_loss P: book P (P > 0 Dr custody / Cr investors, P < 0 the reverse, nothing when 0), plus
  the late-fact offset if a trued-up day already includes it (`ledger.policies.late_facts`); record the trade as
  closed (a known open trade is updated).
- `closed` again with the same P: a duplicate, answered with the first entry; with another P: a conflict, booked
  nothing (a person decides). A trade reported for another account than the first time is a conflict too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Protocol

import msgspec

from ledger import rules
from ledger.model import EntryDraft
from ledger.money import Money
from ledger.policies import late_facts


class TradeFacts(Protocol):
    """What the engine reports of a trade (the integration's decoded trade fits as it is)."""

    @property
    def trade_id(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def executed_at(self) -> datetime: ...
    @property
    def profit_loss(self) -> Decimal | None: ...


class RecordedTrade(msgspec.Struct, frozen=True):
    """What the ledger recorded of a trade before: its account, status, profit or loss and entry."""

    account_id: str
    status: str
    profit_loss_minor: int | None
    entry_id: int | None


class TradeBooking(msgspec.Struct, frozen=True, kw_only=True):
    """What to do with a trade report.

    `record`: store the trade (new, or a known open trade now closed) with `profit_loss_minor`; `drafts`: the entries
    to post (the profit or loss, then its offset); `duplicate`: reported before, nothing changes (`entry_id`: the
    entry booked the first time, if any).
    """

    record: bool = False
    profit_loss_minor: int | None = None
    drafts: tuple[EntryDraft, ...] = ()
    duplicate: bool = False
    entry_id: int | None = None


class TradeConflict(msgspec.Struct, frozen=True):
    """The report contradicts what was recorded: nothing is booked, a person looks at it."""

    reason: str


def trade_key(trade_id: str) -> str:
    """The idempotency key of a trade's entry (the webhook and the back-fill book under the same one)."""
    return f"trade:{trade_id}"


def book_trade(trade: TradeFacts, currency: str, recorded: RecordedTrade | None,
               snapshot_days: Sequence[date]) -> TradeBooking | TradeConflict:
    """The trade rule for one report (see the module docstring).

    `recorded`: what the ledger has for this trade id (None: never seen); `snapshot_days`: A's trued-up days, in
    order, at least from the trade's day on. Raises InvalidAmount for a profit finer than the currency's scale.
    """
    if recorded is not None and recorded.account_id != trade.account_id:
        return TradeConflict(f"trade {trade.trade_id} was reported for account {recorded.account_id}")
    if trade.status == "open":
        return TradeBooking(record=recorded is None, duplicate=recorded is not None)
    pnl = Money.from_decimal(trade.profit_loss, currency)
    if recorded is not None and recorded.status == "closed":
        if recorded.profit_loss_minor != pnl.minor:
            return TradeConflict(f"trade {trade.trade_id} closed again with profit_loss {pnl} "
                                 f"(first {Money(minor=recorded.profit_loss_minor, currency=currency)})")
        return TradeBooking(duplicate=True, entry_id=recorded.entry_id)
    key = trade_key(trade.trade_id)
    draft = rules.gain_or_loss("trade", trade.account_id, pnl, idempotency_key=key, effective_at=trade.executed_at,
                               memo=f"{trade.side} {trade.symbol} closed",
                               metadata={"trade_id": trade.trade_id, "symbol": trade.symbol})
    if draft is None:
        return TradeBooking(record=True, profit_loss_minor=pnl.minor)
    offset = late_facts.offset(trade.account_id, trade.executed_at, pnl, cause_key=key,
                               cause=f"trade {trade.trade_id}", snapshot_days=snapshot_days)
    return TradeBooking(record=True, profit_loss_minor=pnl.minor,
                        drafts=(draft,) if offset is None else (draft, offset))
