"""Reads of the books: balances (now or as of an effective time), entries, the journal, statements with their
page cursors, investment accounts. Each takes a unit of work (`Ledger` runs it read-only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ledger import chart
from ledger.accounts import ACCOUNT_COLUMNS, ACCOUNT_FROM, account_of
from ledger.errors import InvalidEntry, UnknownAccount, UnknownEntry
from ledger.model import (
    Entry,
    InvestmentAccount,
    PostingView,
    Statement,
    StatementLine,
)
from ledger.money import Money
from ledger.times import ONE_MICROSECOND, aware, aware_or_none, just_before

if TYPE_CHECKING:
    from ledger.book import Tx

PAGE_LIMIT_MAX = 1000


def balance(tx: Tx, account_id: str, as_of: datetime | None = None) -> Money:
    """What the platform owes A's investor (liabilities:investors:A), now or as of an effective time."""
    try:
        return ledger_account_balance(tx, chart.investors(account_id), as_of)
    except UnknownAccount:  # investors:A exists exactly when A does
        raise UnknownAccount(f"investment account {account_id!r} does not exist") from None


def ledger_account_balance(tx: Tx, name: str, as_of: datetime | None = None) -> Money:
    account = tx.resolve([name])[name]
    if as_of is None:
        minor = tx.connection.execute(sa.text(
            "SELECT balance_minor FROM ledger_account WHERE id = :id"), {"id": account.id}).scalar_one()
    else:
        minor = tx.connection.execute(sa.text("SELECT ledger_balance_as_of(:id, :at)"),
                                      {"id": account.id, "at": aware(as_of)}).scalar_one()
    return chart.normal_balance(minor, account)


def account(tx: Tx, account_id: str) -> InvestmentAccount:
    row = tx.connection.execute(sa.text(
        f"SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM} WHERE a.account_id = :id"),  # noqa: S608 — module constants
        {"id": account_id}).mappings().first()
    if row is None:
        raise UnknownAccount(f"investment account {account_id!r} does not exist")
    return account_of(row)


def accounts(tx: Tx, *, status: str | None = None, after: str | None = None,
             limit: int = 100) -> list[InvestmentAccount]:
    """Investment accounts by id, `limit` at a time after the id `after` (a cursor)."""
    rows = tx.connection.execute(sa.text(f"""
        SELECT {ACCOUNT_COLUMNS} FROM {ACCOUNT_FROM}
         WHERE (CAST(:status AS text) IS NULL OR a.status = :status)
           AND (CAST(:after AS text) IS NULL OR a.account_id > :after)
         ORDER BY a.account_id LIMIT :limit"""),  # noqa: S608 — built from module constants, never from input
        {"status": status, "after": after, "limit": _limit(limit)}).mappings().all()
    return [account_of(row) for row in rows]


def account_ids_open_since(tx: Tx, start: datetime) -> list[str]:
    """Investment accounts that were open at some time from `start` on: not closed, or closed at or after
    `start` (the accounts a day's sync or a month's distribution must look at), by id."""
    return list(tx.connection.execute(sa.text("""
        SELECT a.account_id FROM investment_account a
         WHERE a.status <> 'closed' OR EXISTS (
                   SELECT 1 FROM account_event ev
                    WHERE ev.account_id = a.account_id AND ev.kind = 'closed' AND ev.occurred_at >= :start)
         ORDER BY a.account_id"""), {"start": aware(start)}).scalars())


def entry(tx: Tx, entry_id: int) -> Entry:
    found = entries(tx, [entry_id])
    if not found:
        raise UnknownEntry(f"journal entry {entry_id} does not exist")
    return found[0]


def entries(tx: Tx, ids: list[int]) -> list[Entry]:
    """The entries with these ids that exist, in the order of `ids`."""
    if not ids:
        return []
    heads = tx.connection.execute(sa.text("""
        SELECT e.id, e.idempotency_key, e.kind, e.investment_account_id, e.effective_at, e.recorded_at,
               e.memo, e.metadata, e.reverses_entry_id, r.id AS reversed_by, e.recorded_by
          FROM journal_entry e LEFT JOIN journal_entry r ON r.reverses_entry_id = e.id
         WHERE e.id = ANY(:ids)"""), {"ids": ids}).mappings().all()
    legs: dict[int, list[PostingView]] = {i: [] for i in ids}
    rows = tx.connection.execute(sa.text("""
            SELECT entry_id, ledger_account_id, side, amount_minor, currency, seq, balance_after_minor
              FROM posting WHERE entry_id = ANY(:ids) ORDER BY entry_id, ledger_account_id, seq"""),
            {"ids": ids}).all()
    accounts = tx.accounts_by_id(row.ledger_account_id for row in rows)  # one read for those not cached
    for row in rows:
        ledger_account = accounts[row.ledger_account_id]
        legs[row.entry_id].append(PostingView(
            account=ledger_account.name, side=row.side, amount=Money(minor=row.amount_minor, currency=row.currency),
            seq=row.seq, balance_after=chart.normal_balance(row.balance_after_minor, ledger_account)))
    order = {entry_id: i for i, entry_id in enumerate(ids)}
    return sorted((Entry(id=h["id"], idempotency_key=h["idempotency_key"], kind=h["kind"],
                         investment_account_id=h["investment_account_id"], effective_at=h["effective_at"],
                         recorded_at=h["recorded_at"], memo=h["memo"], metadata=h["metadata"],
                         reverses_entry_id=h["reverses_entry_id"], reversed_by_entry_id=h["reversed_by"],
                         recorded_by=h["recorded_by"], postings=tuple(legs[h["id"]])) for h in heads),
                  key=lambda e: order[e.id])


def journal(tx: Tx, *, account_id: str | None = None, start: datetime | None = None, end: datetime | None = None,
            after: tuple[datetime, int] | None = None, limit: int = 100) -> list[Entry]:
    """Entries in effective-time order (ties by id), optionally for one investment account."""
    ids = [row.id for row in tx.connection.execute(sa.text("""
        SELECT id FROM journal_entry
         WHERE (CAST(:account AS text) IS NULL OR investment_account_id = :account)
           AND (CAST(:start AS timestamptz) IS NULL OR effective_at >= :start)
           AND (CAST(:end AS timestamptz) IS NULL OR effective_at <= :end)
           AND (CAST(:after_at AS timestamptz) IS NULL OR (effective_at, id) > (:after_at, :after_id))
         ORDER BY effective_at, id LIMIT :limit"""), {
        "account": account_id, "start": aware_or_none(start), "end": aware_or_none(end),
        "after_at": aware_or_none(after[0]) if after else None, "after_id": after[1] if after else 0,
        "limit": _limit(limit)})]
    return entries(tx, ids)


def statement(tx: Tx, name: str, *, start: datetime | None = None, end: datetime | None = None,
              cursor: str | None = None, limit: int = 100) -> Statement:
    """Opening balance, lines with running balance in effective-time order, closing balance.

    `cursor` (from a previous page's `next_cursor`) continues after that page's last line; the
    new page's opening balance is the previous page's closing balance.
    """
    ledger_account = tx.resolve([name])[name]
    # An open-ended statement ends now: an entry dated a little ahead (clock skew) is not in it yet.
    end = aware(end) if end is not None else datetime.now(UTC)
    after = decode_cursor(cursor) if cursor else None
    c = tx.connection
    if after is not None:
        at, seq = after
        opening_minor = c.execute(sa.text("""
            SELECT ledger_balance_as_of(:id, :before) + COALESCE((
                SELECT sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END)::bigint FROM posting
                 WHERE ledger_account_id = :id AND effective_at = :at AND seq <= :seq), 0)"""),
            {"id": ledger_account.id, "before": at - ONE_MICROSECOND, "at": at, "seq": seq}).scalar_one()
    elif start is not None:
        opening_minor = c.execute(sa.text("SELECT ledger_balance_as_of(:id, :at)"),
                                  {"id": ledger_account.id, "at": just_before(aware(start))}).scalar_one()
    else:
        opening_minor = 0
    rows = c.execute(sa.text("""
        SELECT p.entry_id, p.seq, p.effective_at, e.recorded_at, e.kind, e.memo, p.side, p.amount_minor,
               e.recorded_by
          FROM posting p JOIN journal_entry e ON e.id = p.entry_id
         WHERE p.ledger_account_id = :id
           AND (CAST(:start AS timestamptz) IS NULL OR p.effective_at >= :start)
           AND (CAST(:end AS timestamptz) IS NULL OR p.effective_at <= :end)
           AND (CAST(:after_at AS timestamptz) IS NULL OR (p.effective_at, p.seq) > (:after_at, :after_seq))
         ORDER BY p.effective_at, p.seq LIMIT :limit"""), {
        "id": ledger_account.id, "start": aware_or_none(start), "end": end,
        "after_at": after[0] if after else None, "after_seq": after[1] if after else 0,
        "limit": _limit(limit) + 1}).all()
    more = len(rows) > _limit(limit)
    rows = rows[:_limit(limit)]
    sign = chart.normal_sign(ledger_account.type)
    currency = ledger_account.currency
    running = opening_minor * sign
    lines = []
    for row in rows:
        running += (row.amount_minor if row.side == "D" else -row.amount_minor) * sign
        lines.append(StatementLine(
            entry_id=row.entry_id, seq=row.seq, effective_at=row.effective_at,
            recorded_at=row.recorded_at, kind=row.kind, memo=row.memo, side=row.side,
            amount=Money(minor=row.amount_minor, currency=currency),
            balance=Money(minor=running, currency=currency), recorded_by=row.recorded_by))
    next_cursor = encode_cursor(rows[-1].effective_at, rows[-1].seq) if more else None
    return Statement(account=name, currency=currency, start=aware_or_none(start), end=end,
                     opening_balance=Money(minor=opening_minor * sign, currency=currency),
                     lines=tuple(lines), closing_balance=Money(minor=running, currency=currency),
                     next_cursor=next_cursor)


def encode_cursor(at: datetime, seq: int) -> str:
    """A page cursor: `<microseconds since 1970>.<sequence>` (opaque to clients; api.openapi states its pattern)."""
    micros = int((at - datetime(1970, 1, 1, tzinfo=UTC)) / ONE_MICROSECOND)
    return f"{micros}.{seq}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        micros, seq = (int(part) for part in cursor.split("."))
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), seq
    except (ValueError, OverflowError):
        raise InvalidEntry(f"cursor {cursor!r} is not one this ledger gave out") from None


def _limit(limit: int) -> int:
    return max(1, min(int(limit), PAGE_LIMIT_MAX))
