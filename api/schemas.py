"""Request and response shapes of the HTTP API, separate from the domain types; money as strings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from litestar.params import HeaderParameter, QueryParameter

from api.errors import ApiError
from ledger import chart, times
from ledger.holds import HOLD_EXPIRY_SECONDS_MAX
from ledger.model import ACCOUNT_ID_PATTERN, AGENT_TYPE_LENGTH_MAX, MEMO_LENGTH_MAX, PRODUCT_ID_LENGTH_MAX, Posted
from ledger.money import Money
from ledger.times import rfc3339

AccountId = Annotated[str, msgspec.Meta(pattern=ACCOUNT_ID_PATTERN,
                                        description="letters, digits, _ . - (at most 64)")]
ProductId = Annotated[str, msgspec.Meta(min_length=1, max_length=PRODUCT_ID_LENGTH_MAX)]
AgentType = Annotated[str, msgspec.Meta(min_length=1, max_length=AGENT_TYPE_LENGTH_MAX)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3,5}$")]
Reference = Annotated[str, msgspec.Meta(max_length=500)]
# Parameters whose wire name is not a Python name: `from` (a keyword) and the Idempotency-Key header.
PeriodStart = Annotated[str | None, QueryParameter(name="from")]
IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key")]


class CreateAccount(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    account_id: AccountId
    product_id: ProductId
    agent_type: AgentType
    currency: Currency = "USD"
    fee_rate: Decimal | None = None
    initial_capital: Decimal | None = None
    agent_config: dict[str, Any] = {}


class MoneyMovement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    amount: Decimal
    reference: Reference = ""


class WithdrawalRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A withdrawal: booked at once (`immediate`, the contract's), or a two-phase `hold` (ledger.holds) that the
    engine's confirmation posts and a cancel or `expires_in_s` (default HOLD_EXPIRY_SECONDS) voids."""

    amount: Decimal
    reference: Reference = ""
    mode: Literal["immediate", "hold"] = "immediate"
    expires_in_s: Annotated[int, msgspec.Meta(ge=1, le=HOLD_EXPIRY_SECONDS_MAX)] | None = None


class VoidRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Reference = ""


class ReversalRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MEMO_LENGTH_MAX)]  # the reversal's memo


class StatusChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Reference = ""


def parse_time(text: str | None, name: str, *, end_of_day: bool = False) -> datetime | None:
    """Contract §5: a date (inclusive UTC day: its start, or its end with end_of_day) or an RFC 3339 time."""
    if text is None or text == "":
        return None
    try:  # a '+' of an offset arrives as ' ' when the client did not percent-encode it
        return times.parse_time(text.replace(" ", "+"), end_of_day=end_of_day)
    except ValueError as error:
        raise ApiError(422, "invalid", f"{name}: {error}") from None


def posted_out(posted: Posted, account_id: str, amount: Money) -> dict[str, Any]:
    return {"entry_id": posted.entry_id, "account_id": account_id, "amount": str(amount),
            "currency": amount.currency,
            "balance": str(posted.balances_after[chart.investors(account_id)]),
            "effective_at": rfc3339(posted.effective_at), "recorded_at": rfc3339(posted.recorded_at)}
