"""Balance checkpoints: every ledger account's balance at the end of each month, kept exact by the database.

A checkpoint at T holds, for each ledger account, the debits minus credits of its postings effective at
or before T (migration 0005). Reports as of a past time start from the nearest one and add or take back
the postings in between, instead of probing every account's postings; the answer is the same, only
faster. A checkpoint is a cache: `posting_apply` adds a back-dated posting to every checkpoint at or
after it, nothing else may write one, and `invledger verify` recomputes them all.

Checkpoints are made in time order, at month ends (the last microsecond of the month, UTC, which is
what "as of the end of that day" means in reports), from the month of the earliest posting up to the
last month end before now. Making one locks `ledger_account` against writers for about a second per
200k ledger accounts; readers are not held up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

import sqlalchemy as sa

from ledger.book import Ledger
from ledger.db import run_with_retry, sqlstate
from ledger.distribution import month_bounds, next_month
from ledger.errors import InvalidEntry


def month_end(day: date) -> datetime:
    """The last microsecond (UTC) of the month of `day`."""
    return month_bounds(day)[1]


def latest(ledger: Ledger) -> datetime | None:
    with ledger.engine.connect() as c:
        return c.execute(sa.text("SELECT at FROM ledger_checkpoint_latest")).scalar_one_or_none()


def due(ledger: Ledger, now: datetime | None = None) -> list[datetime]:
    """The month ends not checkpointed yet: after the latest checkpoint (or from the earliest posting's
    month) and before `now`."""
    now = now or datetime.now(UTC)
    with ledger.engine.connect() as c:
        row = c.execute(sa.text("""
            SELECT (SELECT at FROM ledger_checkpoint_latest) AS latest,
                   (SELECT min(effective_at) FROM posting) AS earliest""")).one()
    if row.earliest is None:
        return []
    month = row.earliest.astimezone(UTC).date().replace(day=1)
    ends = []
    while (end := month_end(month)) < now:
        if row.latest is None or end > row.latest:
            ends.append(end)
        month = next_month(month)
    return ends


def make(ledger: Ledger, at: datetime) -> int:
    """Make the checkpoint at `at` (after the latest one, before now; making the latest again is a no-op
    that returns 0). Returns the balance rows written: ledger accounts whose balance at `at` is not zero."""
    if at.tzinfo is None:
        raise InvalidEntry(f"time {at.isoformat()} has no time zone; give it in UTC")

    def work(c: sa.Connection) -> int:
        try:
            return c.execute(sa.text("SELECT ledger_checkpoint_make(:at)"), {"at": at}).scalar_one()
        except sa.exc.DBAPIError as error:
            if sqlstate(error) == "22023":  # invalid_parameter_value: the time rules
                raise InvalidEntry(str(error.orig).splitlines()[0]) from None
            raise

    return run_with_retry(ledger.engine, work)


def make_due(ledger: Ledger, ends: Sequence[datetime] | None = None,
             progress: Callable[[datetime, int], None] | None = None) -> list[tuple[datetime, int]]:
    """Make the checkpoints at `ends` (default: every one that is due now), oldest first; returns (time,
    rows written) for each."""
    made = []
    for at in due(ledger) if ends is None else ends:
        rows = make(ledger, at)
        made.append((at, rows))
        if progress:
            progress(at, rows)
    return made
