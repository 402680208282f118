"""The daily true-up (contract §4): the engine's snapshot of day D is the truth for A's balance at the end of D.

A snapshot for A and D books one entry for `closing_balance − the ledger's balance of A at the end of D`, when not
zero, effective at the end of D — plus the late-fact offset when a later day is already trued up (an earlier day's
snapshot arriving after a later one's: `ledger.policies.late_facts`). The same snapshot again is a duplicate; again
with another closing balance, a conflict (nothing booked). A snapshot of a day that has not ended is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta

import msgspec

from ledger import rules
from ledger.errors import InvalidEntry
from ledger.model import EntryDraft
from ledger.money import Money
from ledger.policies import late_facts
from ledger.times import end_of_day

CLOCK_SKEW_MAX = timedelta(minutes=5)  # a snapshot may arrive this much before its day ends by our clock


class RecordedSnapshot(msgspec.Struct, frozen=True):
    """What the ledger recorded of A's snapshot of a day before."""

    closing_balance_minor: int
    true_up_entry_id: int | None


class TrueUp(msgspec.Struct, frozen=True, kw_only=True):
    """The true-up of a day: `difference` = closing − ledger balance; `drafts` the true-up then its offset (none
    when the difference is zero)."""

    difference: Money
    drafts: tuple[EntryDraft, ...] = ()


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """The day's snapshot was booked before: `conflict` says why this one differs ("" — the same: a duplicate)."""

    true_up_entry_id: int | None
    conflict: str = ""


def refuse_unfinished_day(day: date, now: datetime) -> None:
    """A snapshot is the end of a day: refused (InvalidEntry) before that day has ended."""
    if end_of_day(day) > now + CLOCK_SKEW_MAX:
        raise InvalidEntry(f"daily.performance for {day} arrived before that UTC day ended")


def replayed(account_id: str, day: date, closing: Money, recorded: RecordedSnapshot) -> Replayed:
    """A snapshot of a day already trued up: the same closing balance is a duplicate, another one a conflict."""
    if recorded.closing_balance_minor == closing.minor:
        return Replayed(true_up_entry_id=recorded.true_up_entry_id)
    first = Money(minor=recorded.closing_balance_minor, currency=closing.currency)
    return Replayed(true_up_entry_id=recorded.true_up_entry_id,
                    conflict=f"daily.performance for {account_id} on {day} again with closing {closing} "
                             f"(first {first})")


def true_up(account_id: str, day: date, closing: Money, ledger_balance: Money,
            snapshot_days: Sequence[date]) -> TrueUp:
    """The true-up of A's day `day` to the engine's `closing`, the ledger's balance at the end of that day being
    `ledger_balance`; `snapshot_days`: A's trued-up days, in order, at least those after `day`."""
    difference = closing - ledger_balance
    day_end = end_of_day(day)
    draft = rules.gain_or_loss("true_up", account_id, difference,
                               idempotency_key=f"true-up:{account_id}:{day.isoformat()}", effective_at=day_end,
                               memo=f"true-up to the engine's closing balance of {day}",
                               metadata={"date": day.isoformat(), "closing_balance": str(closing),
                                         "ledger_balance": str(ledger_balance)})
    if draft is None:
        return TrueUp(difference=difference)
    offset = late_facts.offset(account_id, day_end, difference, cause_key=f"true-up:{day.isoformat()}",
                               cause=f"the true-up of {day}", snapshot_days=snapshot_days, after_day=day)
    return TrueUp(difference=difference, drafts=(draft,) if offset is None else (draft, offset))
