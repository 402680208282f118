"""The one trial balance (readside.reports) as of any time is what the postings say, whatever history came before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import sqlalchemy as sa
from hypothesis import given

from ledger import Ledger
from ledger.times import ONE_MICROSECOND
from tests.ledger.test_reports_core import DB_SETTINGS, _history, _open, histories
from tests.readside.support import sums_as_of, whole_trial_balance


@DB_SETTINGS
@given(history=histories())
def test_trial_balance_as_of_is_the_as_of_balances(ledger: Ledger, engine: sa.Engine,
                                                   history: tuple[str, list[Any]]) -> None:
    currency, changes = history
    account_id = _open(ledger, currency)
    _history(ledger, account_id, currency, changes)
    times = sorted({at for _, at in changes})
    probes = sorted({*times, *(t - ONE_MICROSECOND for t in times), *(a + (b - a) / 2 for a, b in pairwise(times))})
    mine = {f"liabilities:investors:{account_id}", f"assets:custody:{account_id}"}
    for at in probes:
        trial = whole_trial_balance(engine, at)
        oracle = sums_as_of(engine, at)
        assert {row.account: row.debit.minor - row.credit.minor for row in trial.rows} == oracle
        assert trial.balanced
        for code, (debits, credits) in trial.totals.items():
            rows = [row for row in trial.rows if row.currency == code]
            assert debits.minor == sum(row.debit.minor for row in rows)
            assert credits.minor == sum(row.credit.minor for row in rows)
        for row in trial.rows:
            if row.account in mine:
                sign = 1 if row.type == "asset" else -1
                assert ledger.ledger_account_balance(row.account, as_of=at).minor == sign * (
                    row.debit.minor - row.credit.minor)


def test_trial_balance_far_ahead_is_the_cached_one(ledger: Ledger) -> None:
    account_id = _open(ledger)
    ledger.deposit(account_id, "12.34", idempotency_key=f"{account_id}:d")
    now = whole_trial_balance(ledger.engine)
    ahead = whole_trial_balance(ledger.engine, datetime.now(UTC) + timedelta(days=1))
    assert now.rows == ahead.rows and now.totals == ahead.totals and now.balanced
    before_everything = whole_trial_balance(ledger.engine, datetime(2000, 1, 1, tzinfo=UTC))
    assert all(row.debit.is_zero() and row.credit.is_zero() for row in before_everything.rows
               if row.account.endswith(account_id))
