"""The connection to PostgreSQL and the one retry loop for transient conflicts.

Serialization failures and deadlocks are the database telling two writers to try again in order;
they are retried here, transparently and boundedly, and never surface as business errors.
"""

from __future__ import annotations

import logging
import random
import select
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger("ledger.db")
T = TypeVar("T")

RETRY_ATTEMPTS_MAX = 12
RETRY_BACKOFF_BASE_MS = 2
RETRY_BACKOFF_CAP_MS = 200
# serialization_failure, deadlock_detected, lock_not_available
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


class CommitNotReplicated(Exception):
    """A COMMIT whose wait for the synchronous standby was cancelled (`pg_cancel_backend`, or the standby list
    emptied; the statement timeout does not cover that wait): PostgreSQL keeps it on the primary and reports success
    with only a warning. It is not on a
    second disk, so it is not acknowledged: the caller answers 503, and the client's resend with the same key finds
    it (a replay, never a second booking)."""


_SYNC_WAIT_CANCELLED = "canceling wait for synchronous replication"


def _refuse_unreplicated_commits(engine: sa.Engine) -> None:
    """Turn PostgreSQL's warning about a cancelled synchronous-replication wait into an error after the commit."""

    @sa.event.listens_for(engine, "connect")
    def _watch_notices(dbapi_connection, _record) -> None:  # noqa: ANN001 — psycopg's connection
        owner = weakref.ref(dbapi_connection)  # no cycle: the connection holds its handlers

        def notice(diagnostic) -> None:  # noqa: ANN001
            if (diagnostic.message_primary or "").startswith(_SYNC_WAIT_CANCELLED) and (c := owner()) is not None:
                c.info_invledger_unreplicated = True
        dbapi_connection.add_notice_handler(notice)

    commit = engine.dialect.do_commit

    def do_commit(connection) -> None:  # noqa: ANN001 — the pool's proxy of psycopg's connection
        raw = getattr(connection, "dbapi_connection", connection)  # where the notice handler writes
        raw.info_invledger_unreplicated = False
        commit(connection)
        if raw.info_invledger_unreplicated:
            raw.info_invledger_unreplicated = False
            log.warning("a commit is on the primary only: its wait for the synchronous standby was cancelled")
            raise CommitNotReplicated("the commit was not confirmed by the synchronous standby")

    engine.dialect.do_commit = do_commit  # type: ignore[method-assign]


def create_engine(url: str, *, pool_size: int = 10, statement_timeout_ms: int = 30_000,
                  application_name: str = "invledger", transaction_pooling: bool = False) -> sa.Engine:
    """An engine whose every transaction runs with the statement and lock timeouts, in UTC.

    Directly (or through a pooler in session mode) they are startup options of each connection, and statements run
    often are prepared. Behind a pooler in transaction mode (PgBouncer `pool_mode = transaction`) a session is not
    ours from one transaction to the next: no startup `options` (PgBouncer refuses them), no prepared statements
    (the next transaction may land on another server connection), and the settings are `SET LOCAL` at the start of
    each transaction instead (one round trip, no snapshot taken, so a `SET TRANSACTION ISOLATION LEVEL` may follow).
    """
    settings = {"statement_timeout": statement_timeout_ms, "lock_timeout": statement_timeout_ms, "timezone": "UTC"}
    connect_args: dict[str, object] = {"application_name": application_name, "connect_timeout": 10}
    if transaction_pooling:
        connect_args["prepare_threshold"] = None
    else:
        connect_args["options"] = " ".join(f"-c {name}={value}" for name, value in settings.items())
        connect_args["prepare_threshold"] = 2
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=10,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    if transaction_pooling:
        set_local = "; ".join(f"SET LOCAL {name} = '{value}'" for name, value in settings.items())

        @sa.event.listens_for(engine, "begin")
        def _settings_of_this_transaction(connection: sa.Connection) -> None:
            # On the driver's connection: psycopg opens the transaction with this statement (SQLAlchemy's own
            # execute would begin again, recursively).
            with connection.connection.dbapi_connection.cursor() as cursor:
                cursor.execute(set_local)
        _TRANSACTION_POOLED.add(engine)
    _refuse_unreplicated_commits(engine)
    sa.event.listen(engine.pool, "checkout", _refuse_closed)
    return engine


# Engines behind a pooler in transaction mode: their settings are SET LOCAL in each transaction, so a statement
# sent alone in autocommit would run without its timeouts — run_with_retry runs such work in a transaction there.
_TRANSACTION_POOLED: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def _refuse_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """The pool's check that a connection it hands out is alive, without a round trip (it replaces the pre-ping,
    a `SELECT 1` before every unit of work). An idle connection has nothing to read unless the server said
    goodbye: a restart or a terminated backend sends its FATAL message and closes the socket. Then every pooled
    connection older than it is replaced (as the pre-ping did), and the pool hands out a fresh one. What neither
    check sees — a connection lost after it is handed out — fails that unit of work (503), or is retried where
    that is safe (run_with_retry)."""
    if dbapi_connection.closed or dbapi_connection.broken:
        raise sa.exc.InvalidatePoolError("the connection is closed")
    readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    if readable:
        raise sa.exc.InvalidatePoolError("the server closed the connection (restart or terminated backend)")


def sqlstate(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None)
    return getattr(orig, "sqlstate", None)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and sqlstate(error) in TRANSIENT_SQLSTATES


def is_unavailable(error: BaseException) -> bool:
    """The database cannot be reached (down, restarting, pool exhausted, no synchronous standby confirmed the
    commit): the caller should say 503."""
    if isinstance(error, sa.exc.TimeoutError | CommitNotReplicated):
        return True
    if isinstance(error, OperationalError) and sqlstate(error) not in TRANSIENT_SQLSTATES:
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def run_with_retry(engine: sa.Engine, work: Callable[[sa.Connection], T], *, autocommit: bool = False) -> T:
    """Run `work` in one transaction; commit, or roll back and retry the whole unit on a transient error.

    With `autocommit`, each statement of `work` is a transaction of its own (no BEGIN, no COMMIT): for work whose
    statements are idempotent (a post under its key), so a connection lost under it is retried once too — the
    statement either committed (then it answers a replay) or did not. Behind a pooler in transaction mode the work
    runs in a transaction instead (its settings are set per transaction)."""
    autocommit = autocommit and engine not in _TRANSACTION_POOLED
    attempt = 0
    while True:
        attempt += 1
        try:
            if autocommit:
                return _autocommit(engine, work)
            with engine.begin() as connection:
                return work(connection)
        except DBAPIError as error:
            lost = autocommit and attempt == 1 and error.connection_invalidated
            if not (lost or is_transient(error)) or attempt >= RETRY_ATTEMPTS_MAX:
                raise
            backoff_ms = min(RETRY_BACKOFF_CAP_MS, RETRY_BACKOFF_BASE_MS * 2 ** attempt)
            log.info("transient database conflict, retrying",
                     extra={"sqlstate": sqlstate(error), "attempt": attempt})
            time.sleep(random.uniform(0, backoff_ms) / 1000)


def _autocommit(engine: sa.Engine, work: Callable[[sa.Connection], T]) -> T:
    """`work` in autocommit. Each statement commits as it ends, so a cancelled wait for the synchronous standby
    comes as the statement's notice, not the COMMIT's: checked here as do_commit checks it."""
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        raw.info_invledger_unreplicated = False  # type: ignore[union-attr]
        result = work(connection.execution_options(isolation_level="AUTOCOMMIT"))
        if raw.info_invledger_unreplicated:  # type: ignore[union-attr]
            raw.info_invledger_unreplicated = False  # type: ignore[union-attr]
            log.warning("a commit is on the primary only: its wait for the synchronous standby was cancelled")
            raise CommitNotReplicated("the commit was not confirmed by the synchronous standby")
        return result
