"""The balance update (contract §4): account.balance_updated sets A's balance *as of its `occurred_at`*.

The adjustment is `new_balance − the ledger's balance of A at that time`, effective at that time (now when the
event has no `occurred_at`), memo = the engine's reason; nothing when zero. Entries effective after it stay, so a
late update never rolls the balance back over trades that happened since; and when that time falls in a trued-up
day, the late-fact offset keeps the day's closing balance (`ledger.policies.late_facts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

import msgspec

from ledger import rules
from ledger.model import EntryDraft
from ledger.money import Money
from ledger.policies import late_facts


class Adjustment(msgspec.Struct, frozen=True, kw_only=True):
    """`difference` = new balance − ledger balance; `drafts` the adjustment then its offset (none when zero)."""

    difference: Money
    drafts: tuple[EntryDraft, ...] = ()


def adjustment(account_id: str, new_balance: Money, ledger_balance: Money, *, at: datetime, occurred: bool,
               reason: str, event_key: str, snapshot_days: Sequence[date]) -> Adjustment:
    """The adjustment to `new_balance` as of `at`, where the ledger's balance was `ledger_balance`.

    `occurred`: `at` is the event's own `occurred_at` (the entry is effective then); otherwise `at` is the delivery
    time and the entry is effective when booked. `event_key` is the event's dedup key (the entry's is made of it);
    `snapshot_days`: A's trued-up days, in order, at least from `at`'s day on.
    """
    difference = new_balance - ledger_balance
    draft = rules.gain_or_loss("adjustment", account_id, difference, idempotency_key=f"adjustment:{event_key}",
                               effective_at=at if occurred else None, memo=reason,
                               metadata={"new_balance": str(new_balance), "event_key": event_key})
    if draft is None:
        return Adjustment(difference=difference)
    offset = late_facts.offset(account_id, at, difference, cause_key=event_key, cause="a balance update",
                               snapshot_days=snapshot_days)
    return Adjustment(difference=difference, drafts=(draft,) if offset is None else (draft, offset))
