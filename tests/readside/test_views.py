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


def test_a_page_size_beyond_the_bounds_is_read_as_the_bound(ledger: Ledger, open_account) -> None:
    """A listing compares its page with the size it read (1 to 1000): as asked, 0 was an IndexError on an empty
    listing and a one-row page with no next cursor on a longer one (`invledger outbox list --limit 0`)."""
    open_account("1.00")
    open_account("2.00")
    first = views.journal(ledger, limit=0)
    assert len(first["items"]) == 1 and first["next_cursor"] is not None  # more entries follow
    assert views.accounts(ledger, limit=-3)["next_cursor"] is not None
    # Past their last row (alerts and runs go newest first, below the cursor; the outbox oldest first, after it):
    # an empty page, not an error.
    for listing, cursor in ((views.alerts, 1), (views.reconciliation_runs, 1), (views.outbox_events, 2**62)):
        assert listing(ledger.engine, cursor=cursor, limit=0) == {"items": [], "next_cursor": None}


def test_a_statement_page_is_one_read(ledger: Ledger, open_account) -> None:
    """The statement no longer reads the investment account first: its ledger account exists exactly when it does."""
    account_id = open_account("75.00")
    views.statement(ledger, account_id)  # the ledger account's name is cached from here on, as in a running server
    with checkouts(ledger.engine) as taken:
        body = views.statement(ledger, account_id)
    assert (body["account"], body["closing_balance"], len(taken)) == (f"liabilities:investors:{account_id}", "75.00", 1)
    with pytest.raises(UnknownAccount, match="investment account 'no-such-account' does not exist"):
        views.statement(ledger, "no-such-account")
