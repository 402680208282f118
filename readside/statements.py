"""The issued monthly investor statements, as the doors show them (issuing is documents/statements.py).

A statement is read as it was issued and stored (migration 0015): the latest version of an account's month, or
the one asked for, with the id of the version that corrected it; never recomputed here. A month not issued yet can
be shown as a draft: what the books say now, computed by the same function, marked version 0 and not stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import sqlalchemy as sa

from ledger import Ledger
from ledger.errors import UnknownAccount
from ledger.statements import STORED_COLUMNS, Stored, compute, document, read_inputs, stored

STREAM_ROWS = 50  # statements (document and PDF) held in memory at a time while they are written out


def statement(ledger: Ledger, account_id: str, month: date, *, version: int | None = None) -> Stored | None:
    """A's issued statement for M: the latest version, or the one asked for (None: not issued)."""
    with ledger.engine.connect() as c:
        return _statement(c, account_id, month, version)


def versions(ledger: Ledger, account_id: str, month: date) -> list[dict[str, Any]]:
    """Every issued version of A's statement for M, oldest first: id, version, issued_at, digest, corrects."""
    with ledger.engine.connect() as c:
        return _versions(c, account_id, month)


def statement_with_versions(ledger: Ledger, account_id: str, month: date, *,
                            version: int | None = None) -> tuple[Stored | None, list[dict[str, Any]]]:
    """`statement` and `versions` in one snapshot (what the JSON answer and the page show): read apart, on a replica
    that replays a correction between the two, the statement said it was the latest while the list named a newer."""
    with ledger.engine.connect() as c:
        c.execution_options(isolation_level="REPEATABLE READ")
        found = _statement(c, account_id, month, version)
        return found, _versions(c, account_id, month)


def latest_of_month(ledger: Ledger, month: date, account_ids: list[str] | None = None) -> Iterator[Stored]:
    """The latest issued version of each account's statement for M (of `account_ids`, or every account), by
    account id: one read, streamed (a PDF each), not a round trip per account."""
    with ledger.engine.connect() as c:
        rows = c.execution_options(yield_per=STREAM_ROWS).execute(sa.text(f"""
            SELECT DISTINCT ON (account_id) {STORED_COLUMNS} FROM investor_statement
             WHERE month = :m AND (CAST(:ids AS text[]) IS NULL OR account_id = ANY(:ids))
             ORDER BY account_id, version DESC"""),  # noqa: S608 — ledger.statements' constant
            {"m": month.replace(day=1), "ids": account_ids})
        for row in rows:
            yield stored(row)


def _statement(c: sa.Connection, account_id: str, month: date, version: int | None) -> Stored | None:
    # One round trip: the account (its absence is UnknownAccount, not "not issued") with the one version asked for —
    # its document and PDF only, not every version's; the next version's id comes from the window.
    row = c.execute(sa.text(f"""
        SELECT s.* FROM investment_account a LEFT JOIN LATERAL (
            SELECT {STORED_COLUMNS}, superseded_by FROM (
                SELECT *, lead(id) OVER (ORDER BY version) AS superseded_by FROM investor_statement
                 WHERE account_id = a.account_id AND month = :m) w
             WHERE {"superseded_by IS NULL" if version is None else "version = :v"}) s ON true
         WHERE a.account_id = :a"""),  # noqa: S608 — constants
        {"a": account_id, "m": month.replace(day=1), "v": version}).first()
    if row is None:
        raise UnknownAccount(f"investment account {account_id!r} does not exist")
    return stored(row, row.superseded_by) if row.id is not None else None


def _versions(c: sa.Connection, account_id: str, month: date) -> list[dict[str, Any]]:
    rows = c.execute(sa.text("""
        SELECT id, version, issued_at, issued_by, corrects_id, encode(digest, 'hex') AS digest
          FROM investor_statement WHERE account_id = :a AND month = :m ORDER BY version"""),
        {"a": account_id, "m": month.replace(day=1)}).mappings().all()
    return [dict(r) for r in rows]


def draft(ledger: Ledger, account_id: str, month: date) -> dict[str, Any]:
    """What A's statement for M would say now, not issued (version 0): for a month not distributed yet."""
    with ledger.engine.connect() as c:
        c.execution_options(isolation_level="REPEATABLE READ")
        at = c.execute(sa.text("SELECT now()")).scalar_one()
        figures = compute(read_inputs(c, account_id, month.replace(day=1)))
        c.rollback()
    return document(figures, version=0, issued_at=at, issued_by="")
