"""The ML Engine's wire formats (contract §6–§7, seed §4) as frozen msgspec structs; money is Decimal.

Guarantees: every struct is immutable and validated when decoded (a `ValidationError` otherwise);
money and prices are `Decimal` end to end — JSON numbers are decoded straight to Decimal and encoded
back as JSON numbers (the engine's wire format, seed §4), never through float; NaN, infinities and
more than `DIGITS_MAX` digits are refused. Scale is not enforced here: the engine may quote prices
with more places than a currency has; the ledger converts money exactly or refuses (ledger.money).
Unknown fields are ignored, so the engine may add fields without breaking us; optional fields that are
unset are omitted on encode (the seed's `exit_price?`), and both absent and null decode to None.
"""

from __future__ import annotations

import functools
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from ledger.model import ACCOUNT_ID_PATTERN, AGENT_TYPE_LENGTH_MAX, MEMO_LENGTH_MAX, PRODUCT_ID_LENGTH_MAX
from ledger.money import DIGITS_MAX

ACCOUNT_ID_LENGTH_MAX: Final[int] = 128
TEXT_LENGTH_MAX: Final[int] = 2000

# The ledger's own account ids (investment_account.account_id): the engine only knows the ones we created.
# PostgreSQL text cannot hold NUL: a string with one is refused where it is decoded (the webhook's 422, stored as
# rejected), not at its INSERT, which would fail the delivery's transaction and store nothing.
NO_NUL: Final[str] = r"^[^\x00]*$"
AccountId = Annotated[str, msgspec.Meta(pattern=ACCOUNT_ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=ACCOUNT_ID_LENGTH_MAX, pattern=NO_NUL)]
Text = Annotated[str, msgspec.Meta(max_length=TEXT_LENGTH_MAX, pattern=NO_NUL)]
Reason = Annotated[str, msgspec.Meta(max_length=MEMO_LENGTH_MAX, pattern=NO_NUL)]  # a reason becomes a memo
ERROR_TYPE_LENGTH_MAX: Final[int] = 64
ErrorType = Annotated[str, msgspec.Meta(min_length=1, max_length=ERROR_TYPE_LENGTH_MAX, pattern=NO_NUL)]
ProductId = Annotated[str, msgspec.Meta(min_length=1, max_length=PRODUCT_ID_LENGTH_MAX, pattern=NO_NUL)]
AgentType = Annotated[str, msgspec.Meta(min_length=1, max_length=AGENT_TYPE_LENGTH_MAX, pattern=NO_NUL)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10**9)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]

AccountState = Literal["active", "paused", "closed"]
CapitalOperation = Literal["deposit", "withdrawal"]
Side = Literal["buy", "sell"]
TradeStatus = Literal["open", "closed"]
EventType = Literal["trade.executed", "daily.performance", "account.balance_updated", "account.error",
                    "withdrawal.confirmed"]


def check_decimal(name: str, value: Decimal | None, *, sign: Literal["any", ">=0", ">0"] = "any") -> None:
    # Raised as ValueError so msgspec reports it as a ValidationError naming the struct.
    if value is None:
        return
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value != 0 and len(value.as_tuple().digits) > DIGITS_MAX:
        raise ValueError(f"{name} has more than {DIGITS_MAX} digits")
    if sign == ">0" and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if sign == ">=0" and value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's configuration (`GET|PUT /agents/{agent_id}/config`); `parameters` is free-form."""

    agent_id: Name
    agent_type: Name | None = None
    parameters: dict[str, Any] = {}
    updated_at: UtcTime | None = None


class CreateAccountRequest(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /trading/accounts` (seed CreateMLAccountDto); `initial_capital` may be zero."""

    account_id: AccountId
    product_id: ProductId
    agent_type: AgentType
    initial_capital: Decimal
    agent_config: dict[str, Any] = {}

    def __post_init__(self) -> None:
        check_decimal("initial_capital", self.initial_capital, sign=">=0")


class WithdrawalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Ours (docs/holds.md): `POST /trading/accounts/{id}/withdrawal-requests` — free `amount` of capital for the
    ledger's hold `hold_id` before `expires_at`, then confirm with the webhook `withdrawal.confirmed`.
    `POST …/withdrawal-requests/{hold_id}/cancel` (no body) withdraws the request (voided or expired)."""

    hold_id: Annotated[int, msgspec.Meta(ge=1)]
    amount: Decimal
    expires_at: UtcTime

    def __post_init__(self) -> None:
        check_decimal("amount", self.amount, sign=">0")


class WithdrawalConfirmedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Webhook `withdrawal.confirmed` (ours): the capital of hold `hold_id` is free; the ledger posts the hold.
    One definition with the webhook's (`integration.events.WithdrawalConfirmedData`): a hold id past bigint or an
    amount not above zero is refused where it is decoded (422), by the simulator as by the ledger."""

    account_id: AccountId
    hold_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    amount: Decimal

    def __post_init__(self) -> None:
        check_decimal("amount", self.amount, sign=">0")


class CapitalUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """`POST /trading/accounts/{id}/capital`: a deposit or withdrawal of `amount` (> 0).

    `new_total_capital` is the ledger's balance after the movement, for the engine to cross-check;
    the engine applies `amount`, it does not overwrite its capital with the total.
    """

    operation: CapitalOperation
    amount: Decimal
    new_total_capital: Decimal

    def __post_init__(self) -> None:
        check_decimal("amount", self.amount, sign=">0")
        check_decimal("new_total_capital", self.new_total_capital, sign=">=0")


class AccountAck(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The engine's answer to a command (create, capital, pause, resume, close).

    The seed's engine may answer with only `{account_id}` or an empty body; the rest is optional.
    """

    account_id: AccountId
    status: AccountState | None = None
    capital: Decimal | None = None

    def __post_init__(self) -> None:
        check_decimal("capital", self.capital)


class AccountStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`GET /trading/accounts/{id}/status`: what the engine holds for the account (for reconciliation)."""

    account_id: AccountId
    status: AccountState
    balance: Decimal
    equity: Decimal | None = None
    as_of: UtcTime | None = None

    def __post_init__(self) -> None:
        check_decimal("balance", self.balance)
        check_decimal("equity", self.equity)


class Trade(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A trade (seed MLTradeDto). A closed trade carries its realized `profit_loss` (signed).

    `executed_at` is when this state of the trade happened: the opening for an open trade, the
    closing (when the profit or loss is realized) for a closed one.
    """

    trade_id: Name
    account_id: AccountId
    symbol: Name
    side: Side
    quantity: Decimal
    entry_price: Decimal
    status: TradeStatus
    executed_at: UtcTime
    exit_price: Decimal | None = None
    profit_loss: Decimal | None = None

    def __post_init__(self) -> None:
        check_decimal("quantity", self.quantity, sign=">0")
        check_decimal("entry_price", self.entry_price, sign=">0")
        check_decimal("exit_price", self.exit_price, sign=">0")
        check_decimal("profit_loss", self.profit_loss)
        if self.status == "closed" and self.profit_loss is None:
            raise ValueError("a closed trade must carry profit_loss")


class Performance(msgspec.Struct, frozen=True, kw_only=True):
    """One account's day (seed MLPerformanceDto). `daily_return` is money: the day's trading result."""

    account_id: AccountId
    date: date
    opening_balance: Decimal
    closing_balance: Decimal
    daily_return: Decimal
    trades_executed: Count
    winning_trades: Count
    losing_trades: Count

    def __post_init__(self) -> None:
        check_decimal("opening_balance", self.opening_balance, sign=">=0")
        check_decimal("closing_balance", self.closing_balance, sign=">=0")
        check_decimal("daily_return", self.daily_return)
        if self.winning_trades + self.losing_trades > self.trades_executed:
            raise ValueError("winning_trades + losing_trades exceeds trades_executed")


class TradesPage(msgspec.Struct, frozen=True, kw_only=True):
    trades: list[Trade]


class PerformancePage(msgspec.Struct, frozen=True, kw_only=True):
    performance: list[Performance]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /health`; any JSON object is accepted, `status` defaults to "ok"."""

    status: Text = "ok"


class BalanceUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """Webhook `account.balance_updated`: the engine says the account's balance is now `new_balance` (never below
    zero: the engine cannot lose more than it holds). One definition with the webhook's (`integration.events`)."""

    account_id: AccountId
    new_balance: Decimal
    reason: Reason

    def __post_init__(self) -> None:
        check_decimal("new_balance", self.new_balance, sign=">=0")


class AccountErrorEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Webhook `account.error`; `error_type: critical` means the account must be paused. One definition with the
    webhook's (`integration.events`)."""

    account_id: AccountId
    error_type: ErrorType
    error_message: Text


class WebhookEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook body (contract §6): `data` is kept raw until its `event_type` says what it is."""

    event_type: Name
    data: msgspec.Raw
    event_id: Name | None = None
    occurred_at: UtcTime | None = None


EVENT_DATA_TYPES: Final[dict[str, type]] = {
    "trade.executed": Trade,
    "daily.performance": Performance,
    "account.balance_updated": BalanceUpdated,
    "account.error": AccountErrorEvent,
    "withdrawal.confirmed": WithdrawalConfirmedEvent,
}

T = TypeVar("T")

# Decimals travel as JSON numbers (seed §4); float_hook keeps untyped numbers (agent parameters) exact.
_encoder: Final = msgspec.json.Encoder(decimal_format="number")


def encode(value: object) -> bytes:
    """JSON bytes with Decimals as numbers and times as RFC 3339."""
    return _encoder.encode(value)


@functools.cache
def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(kind, float_hook=Decimal)


def decode(data: bytes, kind: type[T]) -> T:
    """Decode and validate; raises msgspec.DecodeError (a ValidationError when the shape is wrong)."""
    return _decoder(kind).decode(data)


def decode_event_data(
    envelope: WebhookEnvelope,
) -> Trade | Performance | BalanceUpdated | AccountErrorEvent | WithdrawalConfirmedEvent:
    """The typed `data` of a webhook; ValueError for an unknown event type, DecodeError for bad data."""
    kind = EVENT_DATA_TYPES.get(envelope.event_type)
    if kind is None:
        raise ValueError(f"unknown event_type {envelope.event_type!r}")
    return decode(envelope.data, kind)
