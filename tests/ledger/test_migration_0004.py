"""Migration 0004 on books that already exist: the lateness cache is filled from the postings, so as-of
balances stay exact across the upgrade (a database at 0003 with back-dated entries, upgraded to head)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from invledger import database
from ledger import Ledger
from ledger.db import create_engine
from ledger.verify import verify


@pytest.fixture
def url_at_0003(database_url: str) -> Iterator[str]:
    admin = sa.create_engine(sa.make_url(database.sqlalchemy_url(database_url)), isolation_level="AUTOCOMMIT")
    name = f"invledger_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(database.sqlalchemy_url(database_url)).set(database=name).render_as_string(hide_password=False)
    command.upgrade(database.alembic_config(url), "0003")
    yield url
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def test_upgrade_fills_the_lateness_of_existing_books(url_at_0003: str) -> None:
    engine = create_engine(url_at_0003, pool_size=2)
    try:
        ledger = Ledger(engine)
        start = datetime(2025, 6, 1, 12, tzinfo=UTC)
        # The books as the code of revision 0003 wrote them: plain SQL against that schema (today's code writes
        # columns later migrations added).
        with engine.begin() as c:
            c.execute(sa.text("""
                INSERT INTO investment_account (account_id, product_id, agent_type, currency, fee_rate)
                VALUES ('mig-a', 'p', 'swing', 'USD', 0.2)"""))
            c.execute(sa.text("""
                INSERT INTO ledger_account (name, type, currency, investment_account_id)
                VALUES ('assets:custody:mig-a', 'asset', 'USD', 'mig-a'),
                       ('liabilities:investors:mig-a', 'liability', 'USD', 'mig-a')"""))
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
