"""The database refuses what would break the books, whoever writes: raw SQL against the real schema.

Each refusal is attempted in a transaction that is rolled back whatever happens, so a missing guard
fails the test without damaging the session's database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from ledger import InsufficientFunds, IntegrityViolation, InvalidAmount, Ledger, Money, rules
from ledger.model import EntryDraft, Leg

RESTRICT_VIOLATION = "23001"
CHECK_VIOLATION = "23514"
UNIQUE_VIOLATION = "23505"
APPEND_ONLY = "is not allowed: the ledger is append-only"


def _sqlstate(error: BaseException) -> str | None:
    return getattr(getattr(error, "orig", None), "sqlstate", None)


@contextmanager
def _rolled_back(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as connection:
        try:
            yield connection
        finally:
            connection.rollback()


def _refused(engine: sa.Engine, sql: str, **params: Any) -> DBAPIError:
    """Run `sql` in a transaction that is always rolled back; the error it raised."""
    with _rolled_back(engine) as connection:
        try:
            connection.execute(sa.text(sql), params)
        except DBAPIError as error:
            return error
    pytest.fail(f"the database accepted: {sql}")


def _ledger_ids(engine: sa.Engine, account_id: str) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT name, id FROM ledger_account WHERE investment_account_id = :a"), {"a": account_id}).all()
    return {name.split(":")[1]: ledger_id for name, ledger_id in rows}


def _snapshot(engine: sa.Engine) -> tuple[Any, ...]:
    """Everything a refused write could have touched: counts and the sum of every cached balance."""
    with engine.connect() as connection:
        return tuple(connection.execute(sa.text("""
            SELECT (SELECT count(*) FROM journal_entry), (SELECT count(*) FROM posting),
                   (SELECT COALESCE(sum(balance_minor), 0) FROM ledger_account),
                   (SELECT COALESCE(sum(abs(balance_minor)), 0) FROM ledger_account),
                   (SELECT COALESCE(sum(posting_count), 0) FROM ledger_account)""")).one())


def _insert_entry(connection: sa.Connection, account_id: str | None, *, key: str | None = None,
                  kind: str = "deposit", reverses: int | None = None) -> int:
    return connection.execute(sa.text("""
        INSERT INTO journal_entry (idempotency_key, content_hash, kind, investment_account_id, effective_at,
                                   reverses_entry_id)
        VALUES (:key, :hash, :kind, :account, now(), :reverses) RETURNING id"""), {
        "key": key or f"raw:{uuid.uuid4().hex}", "hash": os.urandom(32), "kind": kind, "account": account_id,
        "reverses": reverses}).scalar_one()


def _insert_leg(connection: sa.Connection, entry_id: int, ledger_account_id: int, side: str, amount_minor: int,
                currency: str = "USD") -> None:
    connection.execute(sa.text("""
        INSERT INTO posting (ledger_account_id, entry_id, side, amount_minor, currency, seq, effective_at,
                             balance_after_minor, late)
        VALUES (:account, :entry, :side, :amount, :currency, 0, now(), 0, false)"""), {
        "account": ledger_account_id, "entry": entry_id, "side": side, "amount": amount_minor,
        "currency": currency})


@pytest.fixture
def booked(ledger: Ledger, open_account: Callable[..., str], engine: sa.Engine) -> dict[str, Any]:
    """An account with a few committed entries; what the raw SQL tests aim at."""
    account_id = open_account("100.00")
    deposit = ledger.deposit(account_id, "25.00", idempotency_key=f"{account_id}:d1")
    ledger.withdraw(account_id, "10.00", idempotency_key=f"{account_id}:w1")
    return {"account_id": account_id, "entry_id": deposit.entry_id, "ids": _ledger_ids(engine, account_id)}


# ------------------------------------------------------------------------------- append-only

@pytest.mark.parametrize("sql", [
    "UPDATE posting SET amount_minor = amount_minor + 1 WHERE entry_id = :entry",
    "UPDATE posting SET side = CASE side WHEN 'D' THEN 'C' ELSE 'D' END WHERE entry_id = :entry",
    "UPDATE posting SET balance_after_minor = 0 WHERE entry_id = :entry",
    "DELETE FROM posting WHERE entry_id = :entry",
    "UPDATE journal_entry SET memo = 'edited' WHERE id = :entry",
    "UPDATE journal_entry SET effective_at = effective_at - interval '1 day' WHERE id = :entry",
    "DELETE FROM journal_entry WHERE id = :entry",
])
def test_postings_and_entries_cannot_be_updated_or_deleted(engine: sa.Engine, booked: dict[str, Any],
                                                           sql: str) -> None:
    before = _snapshot(engine)
    error = _refused(engine, sql, entry=booked["entry_id"])
    assert _sqlstate(error) == RESTRICT_VIOLATION
    table = "posting" if "posting" in sql else "journal_entry"
    operation = sql.split()[0]
    assert f"{operation} on {table} {APPEND_ONLY}; post a reversal instead" in str(error.orig)
    assert _snapshot(engine) == before


@pytest.mark.parametrize("sql", [
    "TRUNCATE posting", "TRUNCATE journal_entry CASCADE", "TRUNCATE ledger_account CASCADE",
    "TRUNCATE investment_account CASCADE",
])
def test_truncate_is_refused(engine: sa.Engine, booked: dict[str, Any], sql: str) -> None:
    before = _snapshot(engine)
    error = _refused(engine, sql)
    assert _sqlstate(error) == RESTRICT_VIOLATION
    assert "TRUNCATE on " in str(error.orig) and APPEND_ONLY in str(error.orig)
    assert _snapshot(engine) == before


@pytest.mark.parametrize("assignment", [
    "balance_minor = balance_minor + 100", "balance_minor = 0", "posting_count = 0",
    "max_effective_at = now() + interval '1 year'", "max_lateness_us = max_lateness_us + 1",
    "currency = 'EUR'", "name = name || 'x'",
])
def test_cached_balance_cannot_be_set_directly(engine: sa.Engine, booked: dict[str, Any],
                                               assignment: str) -> None:
    before = _snapshot(engine)
    error = _refused(engine, f"UPDATE ledger_account SET {assignment} WHERE id = :id",
                     id=booked["ids"]["investors"])
    assert _sqlstate(error) == RESTRICT_VIOLATION
    assert "balance is derived from postings and cannot be set directly" in str(error.orig)
    assert _snapshot(engine) == before


def test_a_ledger_account_cannot_be_deleted(engine: sa.Engine, booked: dict[str, Any]) -> None:
    error = _refused(engine, "DELETE FROM ledger_account WHERE id = :id", id=booked["ids"]["custody"])
    assert _sqlstate(error) == RESTRICT_VIOLATION and APPEND_ONLY in str(error.orig)


def test_a_ledger_account_type_cannot_change(ledger: Ledger, engine: sa.Engine, booked: dict[str, Any]) -> None:
    """The type decides the sign of every balance and report of the account; `Ledger` caches it as
    immutable ("a committed ledger account's id, type and currency never change"). Today the database
    lets `UPDATE ledger_account SET type = 'asset'` through, flipping the investor's balance."""
    error = _refused(engine, "UPDATE ledger_account SET type = 'asset' WHERE id = :id", id=booked["ids"]["investors"])
    assert _sqlstate(error) == RESTRICT_VIOLATION


def test_a_new_ledger_account_starts_empty(engine: sa.Engine) -> None:
    name = f"assets:custody:raw-{uuid.uuid4().hex[:8]}"
    error = _refused(engine, """INSERT INTO ledger_account (name, type, currency, balance_minor)
                                VALUES (:name, 'asset', 'USD', 500)""", name=name)
    assert _sqlstate(error) == CHECK_VIOLATION and "starts empty" in str(error.orig)


# ----------------------------------------------------------------------- balanced at commit

def _fails_at_commit(engine: sa.Engine, write: Callable[[sa.Connection], None], message: str) -> None:
    """`write` is accepted statement by statement (the check is deferred) and refused at COMMIT."""
    before = _snapshot(engine)
    written = False
    with pytest.raises(IntegrityError, match=message) as refused:
        with engine.begin() as connection:
            write(connection)
            written = True
    assert written, "refused before commit: the balance check must be deferred to COMMIT"
    assert _sqlstate(refused.value) == CHECK_VIOLATION
    assert _snapshot(engine) == before


def test_an_unbalanced_entry_fails_at_commit(engine: sa.Engine, booked: dict[str, Any]) -> None:
    ids = booked["ids"]

    def write(connection: sa.Connection) -> None:
        entry_id = _insert_entry(connection, booked["account_id"])
        _insert_leg(connection, entry_id, ids["custody"], "D", 1000)
        _insert_leg(connection, entry_id, ids["investors"], "C", 999)

    _fails_at_commit(engine, write, "does not balance in USD")


def test_an_entry_balanced_in_sum_but_not_per_currency_fails(engine: sa.Engine, ledger: Ledger,
                                                            open_account: Callable[..., str]) -> None:
    usd = _ledger_ids(engine, open_account("10.00", "USD"))
    eur = _ledger_ids(engine, open_account("10.00", "EUR"))

    def write(connection: sa.Connection) -> None:
        entry_id = _insert_entry(connection, None, kind="transfer")
        _insert_leg(connection, entry_id, usd["custody"], "D", 500, "USD")
        _insert_leg(connection, entry_id, eur["investors"], "C", 500, "EUR")

    _fails_at_commit(engine, write, "does not balance in EUR, USD")


def test_a_one_leg_entry_fails_at_commit(engine: sa.Engine, booked: dict[str, Any]) -> None:
    def write(connection: sa.Connection) -> None:
        _insert_leg(connection, _insert_entry(connection, booked["account_id"]), booked["ids"]["custody"], "D", 1)

    _fails_at_commit(engine, write, "has 1 legs; an entry needs at least two")


def test_an_entry_without_legs_fails_at_commit(engine: sa.Engine, booked: dict[str, Any]) -> None:
    def write(connection: sa.Connection) -> None:
        _insert_entry(connection, booked["account_id"])

    _fails_at_commit(engine, write, "has 0 legs")


def test_a_balanced_raw_entry_is_accepted_and_applied(engine: sa.Engine, ledger: Ledger,
                                                      booked: dict[str, Any]) -> None:
    """The counterpart of the refusals: the guards do not stop a correct writer."""
    ids, account_id = booked["ids"], booked["account_id"]
    before = ledger.balance(account_id)
    with engine.begin() as connection:
        entry_id = _insert_entry(connection, account_id)
        _insert_leg(connection, entry_id, ids["custody"], "D", 1234)
        _insert_leg(connection, entry_id, ids["investors"], "C", 1234)
    assert ledger.balance(account_id) == before + Money(minor=1234, currency="USD")
    postings = {p.account.split(":")[1]: p for p in ledger.entry(entry_id).postings}
    assert postings["investors"].balance_after == ledger.balance(account_id)


def test_legs_cannot_be_added_to_an_entry_of_an_earlier_transaction(engine: sa.Engine,
                                                                    booked: dict[str, Any]) -> None:
    before = _snapshot(engine)
    ids = booked["ids"]
    with _rolled_back(engine) as connection:
        with pytest.raises(IntegrityError, match="is closed: legs may only be added in the transaction") as refused:
            # a balanced pair, so only the "closed entry" rule can refuse it
            _insert_leg(connection, booked["entry_id"], ids["custody"], "D", 700)
            _insert_leg(connection, booked["entry_id"], ids["investors"], "C", 700)
    assert _sqlstate(refused.value) == RESTRICT_VIOLATION
    assert _snapshot(engine) == before


# ----------------------------------------------------------------------------- each posting

@pytest.mark.parametrize(("amount_minor", "currency", "message"), [
    (0, "USD", "posting_amount_minor_check"),
    (-500, "USD", "posting_amount_minor_check"),
    (500, "EUR", "posting in EUR to ledger account"),
])
def test_a_bad_posting_is_refused(engine: sa.Engine, booked: dict[str, Any], amount_minor: int, currency: str,
                                  message: str) -> None:
    before = _snapshot(engine)
    ids = booked["ids"]
    with _rolled_back(engine) as connection:
        entry_id = _insert_entry(connection, booked["account_id"])
        with pytest.raises(IntegrityError, match=message) as refused:
            _insert_leg(connection, entry_id, ids["custody"], "D", amount_minor, currency)
    assert _sqlstate(refused.value) == CHECK_VIOLATION
    assert _snapshot(engine) == before


def test_a_posting_side_is_debit_or_credit(engine: sa.Engine, booked: dict[str, Any]) -> None:
    with _rolled_back(engine) as connection:
        entry_id = _insert_entry(connection, booked["account_id"])
        with pytest.raises(IntegrityError, match="posting_side_check"):
            _insert_leg(connection, entry_id, booked["ids"]["custody"], "X", 100)


def test_a_second_entry_with_the_same_idempotency_key_is_refused(engine: sa.Engine,
                                                               booked: dict[str, Any]) -> None:
    key = f"{booked['account_id']}:d1"  # the deposit's key
    with _rolled_back(engine) as connection:
        with pytest.raises(IntegrityError, match="journal_entry_idempotency_key_key") as refused:
            _insert_entry(connection, booked["account_id"], key=key)
    assert _sqlstate(refused.value) == UNIQUE_VIOLATION


def test_a_second_reversal_of_the_same_entry_is_refused(engine: sa.Engine, ledger: Ledger,
                                                       booked: dict[str, Any]) -> None:
    first = ledger.reverse(booked["entry_id"], reason="first")
    assert not first.replayed
    with _rolled_back(engine) as connection:
        with pytest.raises(IntegrityError, match="journal_entry_reverses_entry_id_key") as refused:
            _insert_entry(connection, booked["account_id"], kind="reversal", reverses=booked["entry_id"])
    assert _sqlstate(refused.value) == UNIQUE_VIOLATION


def test_only_a_reversal_may_point_at_an_entry(engine: sa.Engine, booked: dict[str, Any]) -> None:
    with _rolled_back(engine) as connection:
        with pytest.raises(IntegrityError, match="journal_entry_check"):
            _insert_entry(connection, booked["account_id"], kind="deposit", reverses=booked["entry_id"])
        connection.rollback()
        with pytest.raises(IntegrityError, match="journal_entry_check"):
            _insert_entry(connection, booked["account_id"], kind="reversal")


# ------------------------------------------------------------ the core on top of the guards

def test_a_balanced_entry_can_be_posted_inside_a_savepoint(ledger: Ledger, open_account: Callable[..., str]) -> None:
    """A savepoint is part of the transaction, so the "legs only in the creating transaction" guard must
    let it through. Today it compares the entry's xmin (the subtransaction's xid) with the top-level
    xid and refuses: IntegrityViolation "journal entry N is closed"."""
    account_id = open_account("100.00")
    draft = rules.deposit(account_id, Money.from_decimal("5.00", "USD"), idempotency_key=f"{account_id}:sp")

    def work(tx: Any) -> Any:
        with tx.connection.begin_nested():
            return tx.post(draft)

    posted = ledger.transact(work)
    assert str(ledger.balance(account_id)) == "105.00"
    assert posted.balances_after[f"liabilities:investors:{account_id}"] == ledger.balance(account_id)


def test_a_leg_with_a_float_minor_is_refused_not_rounded(ledger: Ledger, open_account: Callable[..., str]) -> None:
    """`float` never appears on a money path. A Money built with minor=1250.5 passes `_validate` and is
    cast by PostgreSQL to bigint 1250: half a cent vanishes without an error."""
    account_id = open_account("100.00")
    with pytest.raises((InvalidAmount, IntegrityViolation, TypeError, ValueError)):
        half = Money(minor=1250.5, currency="USD")  # type: ignore[arg-type]
        ledger.post(EntryDraft(kind="trade", idempotency_key=f"{account_id}:float", investment_account_id=account_id,
                               legs=(Leg(account=f"assets:custody:{account_id}", side="D", amount=half),
                                     Leg(account=f"liabilities:investors:{account_id}", side="C", amount=half))))
    assert str(ledger.balance(account_id)) == "100.00"


def test_a_refused_withdrawal_leaves_nothing_in_its_unit_of_work(ledger: Ledger,
                                                                open_account: Callable[..., str]) -> None:
    """`Tx.withdraw` inserts the entry, then raises InsufficientFunds; the insert stays in the transaction.
    A caller that handles the refusal and commits (as webhook processing does for other ledger errors)
    books the overdraft: balance 100.00, withdraw 150.00 refused, committed balance -50.00."""
    account_id = open_account("100.00")

    def work(tx: Any) -> str:
        with pytest.raises(InsufficientFunds):
            tx.withdraw(account_id, "150.00", idempotency_key=f"{account_id}:too-much")
        return str(tx.balance(account_id))

    inside = ledger.transact(work)
    assert (inside, str(ledger.balance(account_id))) == ("100.00", "100.00")


@pytest.mark.parametrize("call", [
    "ledger_epoch_us(now())",
    "ledger_posting_digest(1, 1, 1, 'D', 1, 'USD', now(), 1, false, '\\x00'::bytea)",
    "ledger_entry_digest(e) FROM journal_entry e",
    "webhook_event_digest(w) FROM webhook_event w",
])
def test_the_digest_helpers_are_inlined(engine: sa.Engine, call: str) -> None:
    """The triggers call these once or twice a leg: run through the SQL-function executor (a function declared
    IMMUTABLE whose body is STABLE is never inlined) they cost 2.5 times as much (migration 0014)."""
    with engine.connect() as connection:
        plan = "\n".join(connection.exec_driver_sql(f"EXPLAIN VERBOSE SELECT {call}").scalars())
    assert not any(name in plan for name in ("ledger_epoch_us", "ledger_posting_digest", "ledger_entry_digest",
                                             "webhook_event_digest")), plan
