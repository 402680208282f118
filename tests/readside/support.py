"""Helpers for reading whole reports in tests, and the plain oracle they are checked against."""

from __future__ import annotations

from datetime import datetime

import msgspec
import sqlalchemy as sa

from readside import reports
from readside.reports import TrialBalancePage


def whole_trial_balance(engine: sa.Engine, as_of: datetime | None = None) -> TrialBalancePage:
    """Every page of the trial balance as one (the session's database outgrows a page as the tests run)."""
    first = page = reports.trial_balance(engine, as_of)
    rows = list(page.rows)
    while page.next_cursor:
        page = reports.trial_balance(engine, as_of, after=page.next_cursor)
        rows += page.rows
    return msgspec.structs.replace(first, rows=tuple(rows), next_cursor=None)


def sums_as_of(engine: sa.Engine, at: datetime | None = None) -> dict[str, int]:
    """Debits minus credits of every ledger account from the postings themselves (the plain oracle)."""
    with engine.connect() as connection:
        return dict(connection.execute(sa.text("""
            SELECT a.name, COALESCE(sum(CASE p.side WHEN 'D' THEN p.amount_minor ELSE -p.amount_minor END), 0)::bigint
              FROM ledger_account a LEFT JOIN posting p ON p.ledger_account_id = a.id
                   AND (CAST(:at AS timestamptz) IS NULL OR p.effective_at <= :at)
             GROUP BY a.name"""), {"at": at}).all())


def totals_as_of(engine: sa.Engine, at: datetime | None = None) -> dict[str, tuple[int, int]]:
    """Per currency, the debit balances and the credit balances of every ledger account, from the postings."""
    with engine.connect() as connection:
        currency_of = dict(connection.execute(sa.text("SELECT name, currency FROM ledger_account")).all())
    totals: dict[str, tuple[int, int]] = {}
    for name, minor in sums_as_of(engine, at).items():
        debit, credit = totals.get(currency_of[name], (0, 0))
        totals[currency_of[name]] = (debit + max(minor, 0), credit + max(-minor, 0))
    return totals
