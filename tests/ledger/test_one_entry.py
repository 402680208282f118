"""The one-entry path (issue 19, point 9): `Ledger.post` is one statement in autocommit (`ledger_post_entry`,
migration 0016); a refusal writes nothing, so inside a caller's transaction it needs no savepoint; a connection
the server closed is replaced before it is used, without a ping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from ledger import DuplicateConflict, InsufficientFunds, Ledger, Money, Tx, rules
from ledger.db import create_engine


def _trade(account_id: str, minor: int, key: str) -> Any:
    return rules.gain_or_loss("trade", account_id, Money(minor=minor, currency="USD"), idempotency_key=key,
                              effective_at=None)


def test_ledger_post_is_one_statement_in_autocommit(ledger: Ledger, engine: sa.Engine,
                                                     open_account: Callable[..., str]) -> None:
    account_id = open_account("100.00")
    ledger.post(_trade(account_id, 1, f"{account_id}:warm"))  # the ledger accounts are cached from here on
    seen: list[tuple[str, bool]] = []

    def record(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append((statement.split("(")[0].split()[-1], connection.connection.dbapi_connection.autocommit))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        posted = ledger.post(_trade(account_id, 250, f"{account_id}:one"))
        replay = ledger.post(_trade(account_id, 250, f"{account_id}:one"))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert seen == [("ledger_post_entry", True)] * 2  # no BEGIN, no COMMIT, no ping: one round trip each
    assert not posted.replayed and replay.replayed and replay.entry_id == posted.entry_id
    assert posted.balances_after == replay.balances_after
    assert posted.balances_after[f"liabilities:investors:{account_id}"] == Money.from_decimal("102.51", "USD")
    with pytest.raises(DuplicateConflict):
        ledger.post(_trade(account_id, 251, f"{account_id}:one"))


def test_a_refusal_leaves_the_callers_transaction_usable(ledger: Ledger, open_account: Callable[..., str]) -> None:
    account_id = open_account("10.00")

    def work(tx: Tx) -> int:
        with pytest.raises(InsufficientFunds, match="would fall to -0.01"):
            tx.post(rules.withdrawal(account_id, Money.from_decimal("10.01", "USD"),
                                     idempotency_key=f"{account_id}:w1"))
        return tx.post(rules.withdrawal(account_id, Money.from_decimal("4.00", "USD"),
                                        idempotency_key=f"{account_id}:w2")).entry_id

    entry_id = ledger.transact(work)
    assert ledger.balance(account_id) == Money.from_decimal("6.00", "USD")
    assert ledger.entry(entry_id).kind == "withdrawal"
    with pytest.raises(InsufficientFunds):  # nothing of the refused one was written: its key is still free
        ledger.post(rules.withdrawal(account_id, Money.from_decimal("10.01", "USD"),
                                     idempotency_key=f"{account_id}:w1"))
    refused = ledger.journal(account_id=account_id, limit=10)
    assert [e.idempotency_key for e in refused if e.kind == "withdrawal"] == [f"{account_id}:w2"]


def test_a_connection_the_server_closed_is_replaced_without_a_ping(migrated_url: str, engine: sa.Engine,
                                                                    open_account: Callable[..., str]) -> None:
    account_id = open_account("100.00")
    own = create_engine(migrated_url, pool_size=2, application_name="one-entry-test")
    try:
        ledger = Ledger(own)
        ledger.post(_trade(account_id, 1, f"{account_id}:before"))
        with own.connect() as c:
            pid_before = c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as c:  # what a restart does to every backend: terminate it (it says FATAL, closes)
            assert c.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid_before}).scalar_one()
        posted = ledger.post(_trade(account_id, 2, f"{account_id}:after"))  # no error reaches the caller
        assert not posted.replayed
        with own.connect() as c:
            assert c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != pid_before
    finally:
        own.dispose()


@pytest.mark.parametrize("guarded", [False, True])
def test_post_many_validates_every_draft_before_writing_any(ledger: Ledger, open_account: Callable[..., str],
                                                            guarded: bool) -> None:
    """All or none inside the caller's transaction, on both of post_many's paths (set-based; one by one when a draft
    has a no-overdraft rule): a refused second draft leaves the first unbooked, so the caller may record the refusal
    and commit (a webhook stored as invalid) without a half-booked fact."""
    from ledger import InvalidEntry

    account_id = open_account("100.00")
    first = (rules.withdrawal(account_id, Money.from_decimal("1.00", "USD"), idempotency_key=f"{account_id}:w")
             if guarded else _trade(account_id, 100, f"{account_id}:t"))
    refused = _trade(account_id, 100, "k" * 300)  # an idempotency key past 255 characters

    def work(tx: Tx) -> None:
        with pytest.raises(InvalidEntry, match="idempotency key"):
            tx.post_many([first, refused])

    ledger.transact(work)
    assert ledger.balance(account_id) == Money.from_decimal("100.00", "USD")
    assert [e.kind for e in ledger.journal(account_id=account_id, limit=10)] == ["deposit"]
