"""Entries without an explicit effective time are effective when their accounts are locked, so
concurrent writers never make each other's postings "late" (which would slow as-of queries)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from ledger import Ledger, Money, rules
from ledger.times import ONE_MICROSECOND


def test_concurrent_writers_produce_no_late_postings(ledger: Ledger, engine: sa.Engine, open_account) -> None:
    account_id = open_account("1000.00")

    def trade(i: int) -> None:
        change = Money(minor=(i % 7) - 3 or 1, currency="USD")
        draft = rules.gain_or_loss("trade", account_id, change, idempotency_key=f"{account_id}:t{i}",
                                   effective_at=None)
        ledger.post(draft)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(trade, range(200)))
    with engine.connect() as c:
        rows = c.execute(sa.text("""
            SELECT count(*) AS n, count(*) FILTER (WHERE p.late) AS late,
                   bool_and(e.recorded_at = e.effective_at) AS same_instant
              FROM posting p JOIN ledger_account a ON a.id = p.ledger_account_id
              JOIN journal_entry e ON e.id = p.entry_id
             WHERE a.name = :name"""), {"name": f"liabilities:investors:{account_id}"}).one()
    assert rows.n == 201 and rows.late == 0 and rows.same_instant


def test_as_of_stops_at_the_lateness_bound_and_misses_nothing(ledger: Ledger, engine: sa.Engine,
                                                               open_account) -> None:
    """A trade back-dated by 7 days, then two more weeks of in-order trades: the account remembers the
    7 days (migration 0004), and the as-of balance — which stops its scan of late postings at the first
    in-order posting more than 7 days after the as-of time — equals a plain sum at every posting's time
    and a microsecond either side of it."""
    account_id = open_account(None)
    start = datetime(2025, 3, 1, 12, tzinfo=UTC)

    def trade(key: str, day: int, minor: int) -> None:
        ledger.post(rules.gain_or_loss("trade", account_id, Money(minor=minor, currency="USD"),
                                       idempotency_key=f"{account_id}:{key}", effective_at=start + timedelta(days=day)))

    for day in range(11):
        trade(f"d{day}", day, 100 + day)
    trade("late", 3, 7)  # recorded after day 10: late by exactly 7 days
    trade("late-again", 10, 1000)  # same time as an earlier posting: not late, lateness 0
    for day in range(11, 25):
        trade(f"d{day}", day, 100 + day)
    name = f"liabilities:investors:{account_id}"
    with engine.connect() as c:
        ledger_id, lateness = c.execute(sa.text(
            "SELECT id, max_lateness_us FROM ledger_account WHERE name = :n"), {"n": name}).one()
        assert lateness == 7 * 86_400 * 1_000_000
        times = [row.effective_at for row in c.execute(sa.text(
            "SELECT DISTINCT effective_at FROM posting WHERE ledger_account_id = :id"), {"id": ledger_id})]
        checked = 0
        for at in times:
            for t in (at - ONE_MICROSECOND, at, at + ONE_MICROSECOND):
                fast, slow = c.execute(sa.text("""
                    SELECT ledger_balance_as_of(:id, :t),
                           (SELECT COALESCE(sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END), 0)
                              FROM posting WHERE ledger_account_id = :id AND effective_at <= :t)"""),
                    {"id": ledger_id, "t": t}).one()
                assert fast == slow, t
                checked += 1
    assert checked == 3 * 25
    assert ledger.balance(account_id, as_of=start + timedelta(days=3)).minor == 100 + 101 + 102 + 103 + 7
