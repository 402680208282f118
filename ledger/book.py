"""Units of work on the ledger, and the one place each command is exposed.

`Ledger.transact(work)` runs `work(tx)` as one unit of work: it commits as a whole or not at all, and is retried
as a whole on a deadlock or serialization failure. Callers that must write their own rows in the same transaction
as an entry (webhook deliveries, run records) use `tx.connection`.

The commands and reads live by job — the posting engine in `ledger.posting`, investment accounts and capital in
`ledger.accounts`, reads in `ledger.reads` — each a function of a `Tx`, written once. `_Commands` lists them, and
the same attribute is a method of both doors: on a `Tx` it runs in that unit of work, on the `Ledger` in a
transaction of its own (a read in a read-only one; `post`, one statement, alone in autocommit).

Locking, so concurrent writers neither lose updates nor deadlock: an operation that reads before it writes
(status checks, true-ups) first locks its investment account row (`tx.lock_account`); the legs of an entry are
inserted in ascending ledger-account id, and each insert locks its account row in the posting trigger — one
global order, so no cycle of waits can form.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ledger import accounts as investment_accounts
from ledger import posting, reads
from ledger.db import run_with_retry
from ledger.errors import UnknownAccount
from ledger.model import LedgerAccount

P = ParamSpec("P")
T = TypeVar("T")

_LEDGER_ACCOUNTS_NAMED = sa.text("SELECT id, name, type, currency FROM ledger_account WHERE name = ANY(:names)")
_LEDGER_ACCOUNTS_BY_ID = sa.text("SELECT id, name, type, currency FROM ledger_account WHERE id = ANY(:ids)")


Unit = Literal["transaction", "statement", "read"]


class _Exposed(Generic[P, T]):
    """A function of a unit of work, as a method of `Tx` (run in that transaction) and of `Ledger` (run in a
    `unit` of its own: a transaction; one idempotent statement in autocommit; a read-only connection)."""

    def __init__(self, function: Callable[Concatenate[Tx, P], T], unit: Unit) -> None:
        self.function = function
        self.unit = unit
        functools.update_wrapper(self, function)

    @overload
    def __get__(self, door: None, owner: type) -> _Exposed[P, T]: ...
    @overload
    def __get__(self, door: Tx | Ledger, owner: type) -> Callable[P, T]: ...
    def __get__(self, door: Tx | Ledger | None, owner: type) -> _Exposed[P, T] | Callable[P, T]:
        if door is None:
            return self
        return door._bind(self.function, self.unit)


def command(function: Callable[Concatenate[Tx, P], T]) -> _Exposed[P, T]:
    return _Exposed(function, "transaction")


def statement(function: Callable[Concatenate[Tx, P], T]) -> _Exposed[P, T]:
    """A command that is one idempotent statement (and reads it may need first): the Ledger sends it alone."""
    return _Exposed(function, "statement")


def read(function: Callable[Concatenate[Tx, P], T]) -> _Exposed[P, T]:
    return _Exposed(function, "read")


def _resolve(tx: Tx, names: Iterable[str]) -> dict[str, LedgerAccount]:
    """Ledger accounts by name, seen through `tx` (so accounts it created count too). Cached by the ledger: a
    committed ledger account's id, type and currency never change."""
    names = set(names)
    known = {n: tx._created.get(n) or tx.ledger._accounts.get(n) for n in names}
    missing = sorted(n for n, a in known.items() if a is None)
    if missing:
        for row in tx.connection.execute(_LEDGER_ACCOUNTS_NAMED, {"names": missing}):
            known[row.name] = tx.ledger._remember(LedgerAccount(row.id, row.name, row.type, row.currency))
        unknown = sorted(n for n, a in known.items() if a is None)
        if unknown:
            raise UnknownAccount(f"ledger account {unknown[0]!r} does not exist")
    return known  # type: ignore[return-value]


class _Commands:
    """Every command and read, once; `Tx` and `Ledger` both have them (see the module docstring)."""

    # the posting engine
    post = statement(posting.post)  # one entry, one round trip (migration 0016)
    post_many = command(posting.post_many)
    # investment accounts and capital
    open_account = command(investment_accounts.open_account)
    change_status = command(investment_accounts.change_status)
    deposit = command(investment_accounts.deposit)
    withdraw = command(investment_accounts.withdraw)
    reverse = command(investment_accounts.reverse)
    # reads
    balance = read(reads.balance)
    ledger_account_balance = read(reads.ledger_account_balance)
    account = read(reads.account)
    accounts = read(reads.accounts)
    account_ids_open_since = read(reads.account_ids_open_since)
    entry = read(reads.entry)
    journal = read(reads.journal)
    statement = read(reads.statement)
    resolve = read(_resolve)

    def _bind(self, function: Callable[..., T], unit: Unit) -> Callable[..., T]:
        raise NotImplementedError


class Tx(_Commands):
    """One unit of work on the ledger (see the module docstring). Not shared between threads."""

    # only inside a unit of work: they hold locks, or answer what this transaction wrote
    lock_account = command(investment_accounts.lock_account)
    lock_accounts = command(investment_accounts.lock_accounts)
    existing = command(posting.existing)
    emit = command(investment_accounts.emit)

    def __init__(self, ledger: Ledger, connection: sa.Connection) -> None:
        self.ledger = ledger
        self.connection = connection
        self._created: dict[str, LedgerAccount] = {}  # made in this transaction: not cached until commit

    def _bind(self, function: Callable[..., T], unit: Unit) -> Callable[..., T]:
        return functools.partial(function, self)

    def account_by_id(self, ledger_account_id: int) -> LedgerAccount:
        return self.accounts_by_id([ledger_account_id])[ledger_account_id]

    def accounts_by_id(self, ids: Iterable[int]) -> dict[int, LedgerAccount]:
        """The ledger accounts with these ids (KeyError for one that does not exist): from the cache, the rest in
        one read — a journal page's legs name up to hundreds of accounts a fresh process has not seen."""
        found: dict[int, LedgerAccount] = {}
        missing = []
        for ledger_account_id in set(ids):
            account = self.ledger._accounts_by_id.get(ledger_account_id) or next(
                (a for a in self._created.values() if a.id == ledger_account_id), None)
            if account is None:
                missing.append(ledger_account_id)
            else:
                found[ledger_account_id] = account
        if missing:
            for row in self.connection.execute(_LEDGER_ACCOUNTS_BY_ID, {"ids": missing}):
                found[row.id] = self.ledger._remember(LedgerAccount(row.id, row.name, row.type, row.currency))
        return found

    def created(self, made: Iterable[LedgerAccount]) -> None:
        """Ledger accounts this transaction made: resolved through it, cached by the ledger once it commits."""
        for account in made:
            self._created[account.name] = account


class Ledger(_Commands):
    """The accounting core's entry point. Thread-safe; one per process is enough."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._accounts: dict[str, LedgerAccount] = {}
        self._accounts_by_id: dict[int, LedgerAccount] = {}
        self._lock = threading.Lock()

    def transact(self, work: Callable[[Tx], T]) -> T:
        """Run `work(tx)` in one transaction, retried as a whole on transient conflicts."""
        try:
            return run_with_retry(self.engine, lambda connection: work(Tx(self, connection)))
        except IntegrityError as error:  # raised at commit by the deferred balance check
            raise posting.integrity_error(error) from error

    def read_only(self, work: Callable[[Tx], T]) -> T:
        """Run `work(tx)` on a connection of its own, then roll back: nothing it does stays."""
        with self.engine.connect() as connection:
            result = work(Tx(self, connection))
            connection.rollback()
            return result

    def one_statement(self, work: Callable[[Tx], T]) -> T:
        """Run `work(tx)` in autocommit: for work whose one write is one idempotent statement (a transaction of
        its own: no BEGIN, no COMMIT), retried on transient conflicts and once on a connection lost under it."""
        try:
            return run_with_retry(self.engine, lambda connection: work(Tx(self, connection)), autocommit=True)
        except IntegrityError as error:  # the deferred balance check runs at the statement's end
            raise posting.integrity_error(error) from error

    def _bind(self, function: Callable[..., T], unit: Unit) -> Callable[..., T]:
        run = {"transaction": self.transact, "statement": self.one_statement, "read": self.read_only}[unit]

        @functools.wraps(function)
        def in_a_unit_of_its_own(*args: Any, **kwargs: Any) -> T:
            return run(lambda tx: function(tx, *args, **kwargs))
        return in_a_unit_of_its_own

    def _remember(self, account: LedgerAccount) -> LedgerAccount:
        """Cache a ledger account read from the database (visible to us, so committed or ours)."""
        with self._lock:
            self._accounts[account.name] = account
            self._accounts_by_id[account.id] = account
        return account
