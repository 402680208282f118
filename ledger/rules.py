"""Posting rules (contract §4): business events in, balanced entry drafts out. Pure functions.

Dr / Cr per investment account A:
- deposit X:                Dr custody:A / Cr investors:A
- withdrawal X:             Dr investors:A / Cr custody:A   (never below zero)
- gain or loss P (a closed trade, a true-up, an adjustment): P > 0 as a deposit, P < 0 as a withdrawal
  but never refused — it is a fact reported by the engine
- performance fee F:        Dr investors:A / Cr income:performance-fees:C  and
                            Dr platform-cash:C / Cr custody:A   (the fee leaves custody)
- reversal: the mirror of the entry it reverses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger import chart
from ledger.errors import InvalidEntry
from ledger.model import Entry, EntryDraft, EntryKind, Leg
from ledger.money import Money


def _capital_in(account_id: str, amount: Money) -> tuple[Leg, Leg]:
    return (Leg(account=chart.custody(account_id), side="D", amount=amount),
            Leg(account=chart.investors(account_id), side="C", amount=amount))


def _capital_out(account_id: str, amount: Money) -> tuple[Leg, Leg]:
    return (Leg(account=chart.investors(account_id), side="D", amount=amount),
            Leg(account=chart.custody(account_id), side="C", amount=amount))


def deposit(account_id: str, amount: Money, *, idempotency_key: str, memo: str = "",
            metadata: dict[str, Any] | None = None, effective_at: datetime | None = None) -> EntryDraft:
    _positive(amount)
    return EntryDraft(kind="deposit", idempotency_key=idempotency_key, legs=_capital_in(account_id, amount),
                      investment_account_id=account_id, effective_at=effective_at, memo=memo,
                      metadata=metadata or {})


def withdrawal(account_id: str, amount: Money, *, idempotency_key: str, memo: str = "",
               metadata: dict[str, Any] | None = None, effective_at: datetime | None = None) -> EntryDraft:
    _positive(amount)
    return EntryDraft(kind="withdrawal", idempotency_key=idempotency_key,
                      legs=_capital_out(account_id, amount), investment_account_id=account_id,
                      effective_at=effective_at, memo=memo, metadata=metadata or {},
                      no_overdraft=(chart.investors(account_id),))


def gain_or_loss(kind: EntryKind, account_id: str, change: Money, *, idempotency_key: str,
                 effective_at: datetime | None, memo: str = "",
                 metadata: dict[str, Any] | None = None) -> EntryDraft | None:
    """A signed change of A's capital reported by the engine; None when it is zero (nothing to book)."""
    if change.is_zero():
        return None
    legs = _capital_in(account_id, change) if change.is_positive() else _capital_out(account_id, -change)
    return EntryDraft(kind=kind, idempotency_key=idempotency_key, legs=legs, investment_account_id=account_id,
                      effective_at=effective_at, memo=memo, metadata=metadata or {})


def performance_fee(account_id: str, fee: Money, *, idempotency_key: str, effective_at: datetime | None,
                    memo: str = "", metadata: dict[str, Any] | None = None) -> EntryDraft:
    _positive(fee)
    currency = fee.currency
    legs = (
        Leg(account=chart.investors(account_id), side="D", amount=fee),
        Leg(account=chart.performance_fees(currency), side="C", amount=fee),
        Leg(account=chart.platform_cash(currency), side="D", amount=fee),
        Leg(account=chart.custody(account_id), side="C", amount=fee),
    )
    return EntryDraft(kind="fee", idempotency_key=idempotency_key, legs=legs, investment_account_id=account_id,
                      effective_at=effective_at, memo=memo, metadata=metadata or {},
                      no_overdraft=(chart.investors(account_id),))


def reversal(original: Entry, *, reason: str, idempotency_key: str) -> EntryDraft:
    """The mirror of `original`. An investor balance it debits must not go below zero."""
    if original.kind == "reversal":
        raise InvalidEntry(f"entry {original.id} is itself a reversal; post a new entry instead")
    legs = tuple(Leg(account=p.account, side="C" if p.side == "D" else "D", amount=p.amount)
                 for p in original.postings)
    guarded = tuple(sorted({leg.account for leg in legs
                            if leg.side == "D" and chart.is_investors(leg.account)}))
    return EntryDraft(kind="reversal", idempotency_key=idempotency_key, legs=legs,
                      investment_account_id=original.investment_account_id, memo=reason,
                      metadata={"reversed_kind": original.kind}, reverses_entry_id=original.id,
                      no_overdraft=guarded)


def _positive(amount: Money) -> None:
    if not amount.is_positive():
        raise InvalidEntry(f"amount {amount} must be positive; the side carries the direction")
