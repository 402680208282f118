"""readside.views: an account's balance and what is available come from one read, so they agree."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from ledger import Ledger, UnknownAccount
from readside import views


@contextmanager
def checkouts(engine: sa.Engine) -> Iterator[list[object]]:
    """The connections taken from `engine`'s pool meanwhile (one per read)."""
    taken: list[object] = []

    def count(*_: object) -> None:
        taken.append(None)

    sa.event.listen(engine.pool, "checkout", count)
    try:
        yield taken
    finally:
        sa.event.remove(engine.pool, "checkout", count)


def test_balance_now_is_one_read(ledger: Ledger, open_account) -> None:
    account_id = open_account("250.00")
    with checkouts(ledger.engine) as taken:
        body = views.balance(ledger, account_id)
    assert (body["balance"], body["available"], body["as_of"]) == ("250.00", "250.00", None)
    assert len(taken) == 1  # balance and available read together, never apart
    with pytest.raises(UnknownAccount, match="does not exist"):
        views.balance(ledger, "no-such-account")
