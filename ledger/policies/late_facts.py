"""The late-fact offset: a fact booked after the engine's snapshot of its day must not count twice.

The engine's daily snapshot (daily.performance for day D) is the truth for A's balance at the end of D: the
true-up makes the ledger's balance at the end of D equal its closing balance. Anything booked afterwards that is
effective at or before the end of an already trued-up day — a trade that arrives late, an earlier day's snapshot
arriving after a later one's, a balance update with an old `occurred_at` — would move that closing balance and
count the money twice. So each such booking is followed by an offset entry at the end of the earliest trued-up day
it affects: the day keeps the engine's closing balance, the fact stays visible in the statement, and nothing is
counted twice. (Later trued-up days are then right too: they include the earliest one's balance.)
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from ledger import rules
from ledger.model import EntryDraft
from ledger.money import Money
from ledger.times import end_of_day


def offset(account_id: str, effective_at: datetime, change: Money, *, cause_key: str, cause: str,
           snapshot_days: Sequence[date], after_day: date | None = None) -> EntryDraft | None:
    """The entry that keeps the engine's closing balance of the earliest trued-up day `change` would alter, or None.

    `snapshot_days`: A's trued-up days (engine snapshots booked), in order — at least those from `effective_at`'s
    UTC day on. The day offset is the first of them on or after that day (and after `after_day`: a true-up does
    not offset itself). `cause_key` names the booking offset (the offset's idempotency key is made of it).
    """
    day = effective_at.astimezone(UTC).date()
    if after_day is not None:
        day = max(day, after_day + timedelta(days=1))
    at = bisect.bisect_left(snapshot_days, day)
    if at == len(snapshot_days):
        return None
    snapshot_day = snapshot_days[at]
    return rules.gain_or_loss(
        "true_up", account_id, -change, idempotency_key=f"offset:{account_id}:{cause_key}",
        effective_at=end_of_day(snapshot_day),
        memo=f"offset: {cause} arrived after the engine's snapshot of {snapshot_day}, which already includes it",
        metadata={"offsets": cause_key, "snapshot_date": snapshot_day.isoformat()})
