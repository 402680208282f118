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


def test_account_is_one_read_and_the_page_adds_the_holds(ledger: Ledger, open_account) -> None:
    account_id = open_account("250.00")
    with checkouts(ledger.engine) as taken:
        account = views.account(ledger, account_id, with_holds=True)
    assert (account["balance"], account["available"], account["held"], account["open_holds"]) == \
        ("250.00", "250.00", "0.00", 0)
    assert len(taken) == 1  # the account and its holds on one connection; the page read the holds twice
    assert "held" not in views.account(ledger, account_id)  # the API's body is unchanged
