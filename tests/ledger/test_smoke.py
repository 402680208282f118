"""The core's basic promises, one by one, against the real database."""

import sqlalchemy as sa

from ledger import Ledger


def test_open_deposit_withdraw(ledger: Ledger, open_account) -> None:
    account_id = open_account("100.00")
    posted = ledger.deposit(account_id, "25.50", idempotency_key=f"{account_id}:d1")
    assert str(posted.balances_after[f"liabilities:investors:{account_id}"]) == "125.50"
    assert str(ledger.balance(account_id)) == "125.50"


def test_a_journal_page_names_its_accounts_in_one_read(engine: sa.Engine, open_account) -> None:
    """A process that has not seen the page's ledger accounts yet (a fresh Ledger: the replica's, a new worker's)
    reads their names in one query, not one per leg; once cached, in none."""
    for _ in range(4):
        open_account("10.00")
    fresh = Ledger(engine)
    lookups: list[str] = []

    def record(connection, cursor, statement: str, *args) -> None:  # noqa: ANN001
        if "FROM ledger_account WHERE id" in statement:
            lookups.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        page = fresh.journal(limit=100)
        # One read however many accounts the page names (a read per account made one per name).
        assert len({p.account for e in page for p in e.postings}) >= 2
        assert len(lookups) == 1
        fresh.journal(limit=100)
        assert len(lookups) == 1
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
