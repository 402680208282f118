"""Entries without an explicit effective time are effective when their accounts are locked, so
concurrent writers never make each other's postings "late" (which would slow as-of queries)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from ledger import Ledger, Money, rules


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
