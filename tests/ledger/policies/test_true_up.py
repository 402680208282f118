"""The daily true-up, the balance update as of `occurred_at`, and the late-fact offset — pure, no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import InvalidEntry, Money
from ledger.policies import late_facts
from ledger.policies.balance_update import adjustment
from ledger.policies.true_up import RecordedSnapshot, Replayed, TrueUp, refuse_unfinished_day, replayed, true_up
from ledger.times import end_of_day
from tests.ledger.policies.support import balanced, investors_change_minor
from tests.strategies import days_around

DAY = date(2026, 11, 2)


def usd(minor: int) -> Money:
    return Money(minor=minor, currency="USD")


def test_the_true_up_books_the_difference_at_the_end_of_the_day() -> None:
    found = true_up("a-1", DAY, usd(110_000), usd(100_000), [])
    (draft,) = found.drafts
    assert found.difference == usd(10_000) and investors_change_minor([draft], "a-1") == 10_000
    assert (draft.kind, draft.idempotency_key, draft.effective_at) == ("true_up", "true-up:a-1:2026-11-02",
                                                                       end_of_day(DAY))
    assert draft.metadata == {"date": "2026-11-02", "closing_balance": "1100.00", "ledger_balance": "1000.00"}
    assert true_up("a-1", DAY, usd(100_000), usd(100_000), [DAY + timedelta(days=1)]) == TrueUp(difference=usd(0))


def test_an_earlier_days_snapshot_after_a_later_one_is_offset_there() -> None:
    later = DAY + timedelta(days=3)
    found = true_up("a-1", DAY, usd(90_000), usd(100_000), [DAY, later])  # its own day does not offset itself
    draft, offset = found.drafts
    assert offset.effective_at == end_of_day(later) and offset.idempotency_key == "offset:a-1:true-up:2026-11-02"
    assert investors_change_minor([draft], "a-1") == -10_000 and investors_change_minor(found.drafts, "a-1") == 0


def test_the_same_snapshot_again_is_a_duplicate_and_another_closing_a_conflict() -> None:
    recorded = RecordedSnapshot(110_000, 9)
    assert replayed("a-1", DAY, usd(110_000), recorded) == Replayed(true_up_entry_id=9)
    assert replayed("a-1", DAY, usd(110_001), recorded).conflict == (
        "daily.performance for a-1 on 2026-11-02 again with closing 1100.01 (first 1100.00)")


def test_a_day_that_has_not_ended_is_refused() -> None:
    refuse_unfinished_day(DAY, end_of_day(DAY) - timedelta(minutes=5))  # clock skew allowed
    with pytest.raises(InvalidEntry):
        refuse_unfinished_day(DAY, datetime.combine(DAY, time(12), UTC))


def test_the_balance_update_adjusts_as_of_its_time() -> None:
    at = datetime.combine(DAY, time(9), UTC)
    found = adjustment("a-1", usd(95_000), usd(100_000), at=at, occurred=True, reason="fees at the broker",
                       event_key="event:e-1", snapshot_days=[])
    (draft,) = found.drafts
    assert (draft.kind, draft.idempotency_key, draft.effective_at, draft.memo) == (
        "adjustment", "adjustment:event:e-1", at, "fees at the broker")
    assert draft.metadata == {"new_balance": "950.00", "event_key": "event:e-1"}
    assert investors_change_minor(found.drafts, "a-1") == -5_000 == found.difference.minor
    # Without occurred_at: effective when booked; no difference, no entry.
    now = adjustment("a-1", usd(95_000), usd(100_000), at=at, occurred=False, reason="r", event_key="k",
                     snapshot_days=[])
    assert now.drafts[0].effective_at is None
    assert adjustment("a-1", usd(1), usd(1), at=at, occurred=True, reason="r", event_key="k",
                      snapshot_days=[DAY]).drafts == ()
    # In a trued-up day: offset at its end.
    late = adjustment("a-1", usd(95_000), usd(100_000), at=at, occurred=True, reason="r", event_key="k",
                      snapshot_days=[DAY])
    assert late.drafts[1].effective_at == end_of_day(DAY) and investors_change_minor(late.drafts, "a-1") == 0


@given(st.datetimes(min_value=datetime(2026, 10, 20), max_value=datetime(2026, 11, 14), timezones=st.just(UTC)),
       st.integers(min_value=-10**9, max_value=10**9).filter(bool), days_around(DAY, 12),
       st.one_of(st.none(), st.dates(min_value=date(2026, 10, 20), max_value=date(2026, 11, 14))))
def test_the_offset_lands_on_the_first_trued_up_day_it_would_alter(effective_at: datetime, change_minor: int,
                                                                   snapshot_days: list[date],
                                                                   after_day: date | None) -> None:
    draft = late_facts.offset("a-1", effective_at, usd(change_minor), cause_key="k", cause="a fact",
                              snapshot_days=snapshot_days, after_day=after_day)
    altered = [d for d in snapshot_days if d >= effective_at.date() and (after_day is None or d > after_day)]
    if not altered:
        assert draft is None
        return
    assert draft is not None and balanced(draft)
    assert draft.effective_at == end_of_day(altered[0]) and draft.metadata["snapshot_date"] == altered[0].isoformat()
    assert investors_change_minor([draft], "a-1") == -change_minor
