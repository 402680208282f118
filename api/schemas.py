"""Request and response shapes of the HTTP API, separate from the domain types; money as strings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from litestar.params import HeaderParameter, QueryParameter

from api.errors import ApiError
from ledger import chart, times
from ledger.model import (
    ACCOUNT_ID_PATTERN,
    AGENT_TYPE_LENGTH_MAX,
    MEMO_LENGTH_MAX,
    PRODUCT_ID_LENGTH_MAX,
    Entry,
    InvestmentAccount,
    Posted,
    Statement,
    TrialBalance,
)
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


def account_out(account: InvestmentAccount) -> dict[str, Any]:
    return {"account_id": account.account_id, "product_id": account.product_id, "agent_type": account.agent_type,
            "currency": account.currency, "fee_rate": str(account.fee_rate), "status": account.status,
            "balance": str(account.balance), "agent_config": account.agent_config,
            "created_at": rfc3339(account.created_at), "updated_at": rfc3339(account.updated_at)}


def posted_out(posted: Posted, account_id: str, amount: Money) -> dict[str, Any]:
    return {"entry_id": posted.entry_id, "account_id": account_id, "amount": str(amount),
            "currency": amount.currency,
            "balance": str(posted.balances_after[chart.investors(account_id)]),
            "effective_at": rfc3339(posted.effective_at), "recorded_at": rfc3339(posted.recorded_at)}


def entry_out(entry: Entry) -> dict[str, Any]:
    return {"entry_id": entry.id, "kind": entry.kind, "account_id": entry.investment_account_id,
            "effective_at": rfc3339(entry.effective_at), "recorded_at": rfc3339(entry.recorded_at),
            "memo": entry.memo, "metadata": entry.metadata, "idempotency_key": entry.idempotency_key,
            "reverses_entry_id": entry.reverses_entry_id, "reversed_by_entry_id": entry.reversed_by_entry_id,
            "recorded_by": entry.recorded_by,
            "postings": [{"account": p.account, "side": "debit" if p.side == "D" else "credit",
                          "amount": str(p.amount), "currency": p.amount.currency} for p in entry.postings]}


def statement_out(statement: Statement) -> dict[str, Any]:
    return {"account": statement.account, "currency": statement.currency,
            "from": rfc3339(statement.start) if statement.start else None, "to": rfc3339(statement.end),
            "opening_balance": str(statement.opening_balance),
            "lines": [{"entry_id": line.entry_id, "effective_at": rfc3339(line.effective_at),
                       "recorded_at": rfc3339(line.recorded_at), "kind": line.kind, "memo": line.memo,
                       "debit": str(line.amount) if line.side == "D" else None,
                       "credit": str(line.amount) if line.side == "C" else None,
                       "balance": str(line.balance), "recorded_by": line.recorded_by} for line in statement.lines],
            "closing_balance": str(statement.closing_balance), "next_cursor": statement.next_cursor}


def trial_balance_out(tb: TrialBalance) -> dict[str, Any]:
    return {"as_of": rfc3339(tb.as_of), "balanced": tb.balanced,
            "rows": [{"account": r.account, "type": r.type, "currency": r.currency, "debit": str(r.debit),
                      "credit": str(r.credit)} for r in tb.rows],
            "totals": {c: {"debit": str(d), "credit": str(cr)} for c, (d, cr) in sorted(tb.totals.items())}}
