"""The ML Engine's webhook events (contract §6, seed §5) as typed, validated structs.

Decoding is strict: unknown event types, missing or mistyped fields, non-finite or float-only money,
and times without a zone are all refused. Money arrives as JSON numbers or strings and is decoded
straight to Decimal (never through float); its scale is checked later against the account's currency.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
AccountId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Count = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
Text = Annotated[str, msgspec.Meta(max_length=1000)]
WEBHOOK_BODY_MAX_BYTES = 1024 * 1024


def _finite(name: str, value: Decimal | None, *, positive: bool = False) -> None:
    if value is None:
        return
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite number")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive")
    if len(value.as_tuple().digits) > 34:
        raise ValueError(f"{name} has too many digits")


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (RFC 3339, e.g. 2026-01-02T10:00:00Z)")


class TradeData(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    trade_id: Id
    account_id: AccountId
    symbol: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    side: Literal["buy", "sell"]
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal | None = None
    profit_loss: Decimal | None = None
    status: Literal["open", "closed"]
    executed_at: datetime

    def __post_init__(self) -> None:
        _finite("quantity", self.quantity, positive=True)
        _finite("entry_price", self.entry_price, positive=True)
        _finite("exit_price", self.exit_price, positive=True)
        _finite("profit_loss", self.profit_loss)
        _aware("executed_at", self.executed_at)
        if self.status == "closed" and self.profit_loss is None:
            raise ValueError("a closed trade needs profit_loss")


class PerformanceData(msgspec.Struct, frozen=True, kw_only=True):
    account_id: AccountId
    date: date
    opening_balance: Decimal
    closing_balance: Decimal
    daily_return: Decimal
    trades_executed: Count
    winning_trades: Count
    losing_trades: Count

    def __post_init__(self) -> None:
        for name in ("opening_balance", "closing_balance", "daily_return"):
            _finite(name, getattr(self, name))
        if self.winning_trades + self.losing_trades > self.trades_executed:
            raise ValueError("winning_trades + losing_trades exceeds trades_executed")


class BalanceUpdatedData(msgspec.Struct, frozen=True, kw_only=True):
    account_id: AccountId
    new_balance: Decimal
    reason: Text

    def __post_init__(self) -> None:
        _finite("new_balance", self.new_balance)


class AccountErrorData(msgspec.Struct, frozen=True, kw_only=True):
    account_id: AccountId
    error_type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    error_message: Text


class _Envelope(msgspec.Struct, frozen=True, kw_only=True, tag_field="event_type"):
    event_id: Id | None = None
    occurred_at: datetime | None = None

    def __post_init__(self) -> None:
        _aware("occurred_at", self.occurred_at)


class TradeExecuted(_Envelope, frozen=True, kw_only=True, tag="trade.executed"):
    data: TradeData


class DailyPerformance(_Envelope, frozen=True, kw_only=True, tag="daily.performance"):
    data: PerformanceData


class BalanceUpdated(_Envelope, frozen=True, kw_only=True, tag="account.balance_updated"):
    data: BalanceUpdatedData


class AccountError(_Envelope, frozen=True, kw_only=True, tag="account.error"):
    data: AccountErrorData


Event = TradeExecuted | DailyPerformance | BalanceUpdated | AccountError
_decoder = msgspec.json.Decoder(Event)


def decode(body: bytes) -> Event:
    """Raise msgspec.DecodeError for malformed JSON, msgspec.ValidationError for invalid content."""
    try:
        return _decoder.decode(body)
    except RecursionError:  # nesting deeper than the interpreter allows: refused as malformed, not a crash
        raise msgspec.DecodeError("JSON is nested too deeply") from None


def event_type_of(event: Event) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def dedup_key(event: Event, body: bytes, webhook_id: str | None = None) -> str:
    """Contract §6: event_id / webhook-id, else trade_id+status, else account_id+date, else body SHA-256."""
    if event.event_id:
        return f"event:{event.event_id}"
    if webhook_id:
        return f"event:{webhook_id}"
    if isinstance(event, TradeExecuted):
        return f"trade:{event.data.trade_id}:{event.data.status}"
    if isinstance(event, DailyPerformance):
        return f"performance:{event.data.account_id}:{event.data.date.isoformat()}"
    return f"sha256:{hashlib.sha256(body).hexdigest()}"
