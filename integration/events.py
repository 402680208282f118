"""The ML Engine's webhook events (contract §6, seed §5) as typed, validated structs.

Decoding is strict: unknown event types, missing or mistyped fields, non-finite or float-only money,
and times without a zone are all refused. Money arrives as JSON numbers or strings and is decoded
straight to Decimal (never through float); its scale is checked later against the account's currency.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec

from integration.engine_api import (
    NO_NUL,
    AccountErrorEvent,
    BalanceUpdated,
    Performance,
    Trade,
    UtcTime,
    WithdrawalConfirmedEvent,
)

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_NUL)]
WEBHOOK_BODY_MAX_BYTES = 1024 * 1024


# The seed's MLTradeDto and MLPerformanceDto: one definition, shared with the engine's API (engine_api),
# so a webhook and a back-filled fact are the same struct with the same validation.
TradeData = Trade
PerformanceData = Performance
WithdrawalConfirmedData = WithdrawalConfirmedEvent  # ours (docs/holds.md): the engine freed a hold's capital
BalanceUpdatedData = BalanceUpdated  # a negative new balance is refused: the engine cannot lose more than it holds
AccountErrorData = AccountErrorEvent


class _Envelope(msgspec.Struct, frozen=True, kw_only=True, tag_field="event_type"):
    event_id: Id | None = None
    occurred_at: UtcTime | None = None


class TradeExecuted(_Envelope, frozen=True, kw_only=True, tag="trade.executed"):
    data: TradeData


class DailyPerformance(_Envelope, frozen=True, kw_only=True, tag="daily.performance"):
    data: PerformanceData


class BalanceUpdated(_Envelope, frozen=True, kw_only=True, tag="account.balance_updated"):
    data: BalanceUpdatedData


class AccountError(_Envelope, frozen=True, kw_only=True, tag="account.error"):
    data: AccountErrorData


class WithdrawalConfirmed(_Envelope, frozen=True, kw_only=True, tag="withdrawal.confirmed"):
    data: WithdrawalConfirmedData


Event = TradeExecuted | DailyPerformance | BalanceUpdated | AccountError | WithdrawalConfirmed
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
    """Contract §6: event_id, else a signed webhook-id, else trade_id+status, else account_id+date, else body SHA-256.

    `webhook_id` must be one the Standard Webhooks signature verified (`signature.Verified`). It keys under a
    namespace of its own ("webhook:"), so no header id can claim a key a body's event_id will use later.
    """
    if event.event_id:
        return f"event:{event.event_id}"
    if webhook_id:
        return f"webhook:{webhook_id}"
    if isinstance(event, TradeExecuted):
        return f"trade:{event.data.trade_id}:{event.data.status}"
    if isinstance(event, DailyPerformance):
        return f"performance:{event.data.account_id}:{event.data.date.isoformat()}"
    if isinstance(event, WithdrawalConfirmed):
        return f"withdrawal:{event.data.account_id}:{event.data.hold_id}"
    return f"sha256:{hashlib.sha256(body).hexdigest()}"
