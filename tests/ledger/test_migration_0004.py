"""Migration 0004 on books that already exist: the lateness cache is filled from the postings, so as-of
balances stay exact across the upgrade (a database at 0003 with back-dated entries, upgraded to head)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from ledger import Ledger
from ledger.db import create_engine
from ledger.verify import verify
from service import database
from tests.ledger.conftest import open_account_as_before


@pytest.fixture
def url_at_0003(database_at) -> str:
    return database_at("0003")


def test_upgrade_fills_the_lateness_of_existing_books(url_at_0003: str) -> None:
    engine = create_engine(url_at_0003, pool_size=2)
    try:
        ledger = Ledger(engine)
        start = datetime(2025, 6, 1, 12, tzinfo=UTC)
        open_account_as_before(engine, "mig-a")  # as the code of revision 0003 did
        for day, minor in ((0, 500), (10, 700), (4, -40), (12, 90), (2, 15)):  # day 4: 6 days late; day 2: 10
            gain = minor > 0
            with engine.begin() as c:
                entry = c.execute(sa.text("""
                    INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id,
                                               effective_at)
                    VALUES (:k, sha256(convert_to(:k, 'UTF8')), 'trade', 'mig-a', :at) RETURNING id"""),
                    {"k": f"mig:{day}", "at": start + timedelta(days=day)}).scalar_one()
                for name, side in (("assets:custody:mig-a", "D" if gain else "C"),
                                   ("liabilities:investors:mig-a", "C" if gain else "D")):
                    c.execute(sa.text("""
                        INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency, seq,
                                             effective_at, balance_after_minor, late)
                        SELECT id, :e, :s, :m, 'USD', 0, :at, 0, false FROM ledger_account WHERE name = :n"""),
                        {"e": entry, "s": side, "m": abs(minor), "at": start + timedelta(days=day), "n": name})
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT to_regprocedure('ledger_balances_as_of(timestamptz)')")).scalar() is None

        database.migrate(url_at_0003)

        with engine.connect() as c:
            lateness = dict(c.execute(sa.text("SELECT name, max_lateness_us FROM ledger_account")).all())
            times = [start + timedelta(days=d, hours=h) for d in range(14) for h in (-1, 0, 1)]
            for at in times:
                fast, slow = c.execute(sa.text("""
                    SELECT ledger_balance_as_of(a.id, :t),
                           (SELECT COALESCE(sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END), 0)
                              FROM posting WHERE ledger_account_id = a.id AND effective_at <= :t)
                      FROM ledger_account a WHERE a.name = 'liabilities:investors:mig-a'"""), {"t": at}).one()
                assert fast == slow, at
        ten_days_us = 10 * 86_400 * 1_000_000  # the day-2 trade, recorded after day 12
        assert lateness["liabilities:investors:mig-a"] == lateness["assets:custody:mig-a"] == ten_days_us
        report = verify(engine)
        assert report.ok, report.findings
        assert ledger.balance("mig-a", as_of=start + timedelta(days=4)).minor == 500 + 15 - 40
    finally:
        engine.dispose()
