"""Issuing monthly investor statements (table `investor_statement`, migration 0015; reads: readside/statements.py).

A statement for account A and month M is issued once M's distribution of A is booked (the fee and the high-water
mark are part of it). Issuing computes the figures (ledger.statements), renders the PDF (documents.pdf) and stores
both with their digest, chained to A's statement before. Issuing again changes nothing while the books say the
same; when they say something else — a back-dated trade, a true-up offset, a balance update as of a past time, a
reversal of an entry of M booked back into M — a **corrected statement** is issued: the next version, naming the
one it corrects and what changed. Nothing stored is ever changed (the table is append-only).

The figures are read while A's investor account row is held (FOR SHARE), and the issue time is taken after that
lock: every posting on A is either committed before it or recorded after it. So the stored figures are exactly
the books as recorded up to the issue time, which `invledger verify` recomputes (ledger.statements).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime

import msgspec
import sqlalchemy as sa

from documents import pdf
from ledger import Ledger
from ledger.chart import investors_sql
from ledger.errors import InvalidEntry, UnknownAccount
from ledger.principal import PRINCIPAL, as_caller
from ledger.statements import (
    CHAIN_START,
    STORED_COLUMNS,
    Stored,
    compute,
    differences,
    document,
    encode,
    figures_format_of,
    figures_out,
    month_bounds,
    month_key,
    read_inputs,
    stored,
)

log = logging.getLogger("documents.statements")
CONCURRENCY_MAX = 3  # issuing threads: measured in bench/statements.py
Progress = Callable[[int, int], None]


class NotIssued(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    month: date
    reason: str


class IssueCounts(msgspec.Struct, kw_only=True):
    accounts: int = 0
    issued: int = 0  # first statements issued by this run
    corrected: int = 0  # corrected statements issued by this run
    unchanged: int = 0  # already issued and still what the books say
    not_issued: int = 0  # no distribution for the month yet
    failed: int = 0


def _lock_key(account_id: str) -> str:
    return f"invledger:statement:{account_id}"


def issue(ledger: Ledger, account_id: str, month: date, *,
          now: datetime | None = None) -> tuple[Stored, str] | NotIssued:
    """Issue A's statement for M, or its correction, or return the one issued when the books still agree.
    The second item says which: `issued`, `corrected` or `unchanged`."""
    month = month.replace(day=1)
    if month_bounds(month)[1] > (now or datetime.now(UTC)):
        raise InvalidEntry(f"month {month_key(month)} is not over yet")
    with ledger.engine.begin() as c:
        # The account first, then its investor ledger account (the order every writer takes them in): no posting
        # on A commits while the figures are read, and the issue time is taken after the locks.
        found = c.execute(sa.text("SELECT 1 FROM investment_account WHERE account_id = :a FOR SHARE"),
                          {"a": account_id}).first()
        if found is None:
            raise UnknownAccount(f"investment account {account_id!r} does not exist")
        c.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": _lock_key(account_id)})
        c.execute(sa.text(f"SELECT 1 FROM ledger_account WHERE name = {investors_sql(':a')} FOR SHARE"),  # noqa: S608
                  {"a": account_id})
        if c.execute(sa.text("SELECT 1 FROM distribution WHERE account_id = :a AND month = :m"),
                     {"a": account_id, "m": month}).first() is None:
            return NotIssued(account_id=account_id, month=month,
                             reason=f"{month_key(month)} is not distributed yet for {account_id}")
        issued_at = c.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        figures = compute(read_inputs(c, account_id, month))
        last = _latest(c, account_id, month)
        corrects, correction = None, None
        if last is not None:  # compared in the format it was issued in: a figure added since is no correction
            changed = differences(last.body["figures"], figures_out(figures, figures_format_of(last.body)))
            if not changed:
                return last, "unchanged"
            corrects, correction = last.id, changed
        version = 1 if last is None else last.version + 1
        body = document(figures, version=version, issued_at=issued_at, issued_by=PRINCIPAL.get(),
                        corrects=corrects, correction=correction)
        data, rendered = encode(body), pdf.render(body)
        previous = c.execute(sa.text("""
            SELECT digest FROM investor_statement WHERE account_id = :a ORDER BY id DESC LIMIT 1"""),
            {"a": account_id}).scalar()
        previous = bytes(previous) if previous is not None else CHAIN_START
        digest = hashlib.sha256(previous + hashlib.sha256(data).digest() + hashlib.sha256(rendered).digest()).digest()
        statement_id = c.execute(sa.text("""
            INSERT INTO investor_statement (account_id, month, version, corrects_id, issued_at, issued_by, document,
                                            pdf, previous_digest, digest)
            VALUES (:a, :m, :v, :corrects, :at, :by, :doc, :pdf, :prev, :digest) RETURNING id"""),
            {"a": account_id, "m": month, "v": version, "corrects": corrects, "at": issued_at,
             "by": PRINCIPAL.get(), "doc": data, "pdf": rendered, "prev": previous, "digest": digest}).scalar_one()
    made = Stored(id=statement_id, account_id=account_id, month=month, version=version, issued_at=issued_at,
                  body=body, pdf=rendered, digest=digest)
    return made, ("issued" if last is None else "corrected")


def issue_month(ledger: Ledger, month: date, *, progress: Progress | None = None,
                account_ids: list[str] | None = None, concurrency: int = CONCURRENCY_MAX) -> IssueCounts:
    """Issue (or correct) the statements of `month` for every account distributed in it (or those given)."""
    month = month.replace(day=1)
    if account_ids is None:
        with ledger.engine.connect() as c:
            account_ids = list(c.execute(sa.text(
                "SELECT account_id FROM distribution WHERE month = :m ORDER BY account_id"), {"m": month}).scalars())
    counts = IssueCounts()

    def one(account_id: str) -> tuple[Stored, str] | NotIssued | Exception:
        try:
            return issue(ledger, account_id, month)
        except Exception as error:  # noqa: BLE001 — one account's failure must not stop the others
            log.exception("statement failed", extra={"account_id": account_id, "month": month_key(month)})
            return error

    # A few threads: while one renders a PDF (Python, the GIL), the others wait on the database (locks, commit).
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="statements") as pool:
        for done, outcome in enumerate(pool.map(as_caller(one), account_ids), 1):
            counts.accounts += 1
            if isinstance(outcome, Exception):
                counts.failed += 1
            elif isinstance(outcome, NotIssued):
                counts.not_issued += 1
            else:
                setattr(counts, outcome[1], getattr(counts, outcome[1]) + 1)
            if progress is not None:
                progress(done, len(account_ids))
    return counts


def corrections_due(ledger: Ledger, *, limit: int = 10_000) -> list[tuple[str, date]]:
    """(account, month) pairs whose latest statement predates an entry recorded since and effective in its month:
    their figures may have changed (issuing again tells; an unchanged month stays as it is)."""
    with ledger.engine.connect() as c:
        rows = c.execute(sa.text(f"""
            WITH latest AS (
                SELECT DISTINCT ON (account_id, month) account_id, month, issued_at
                  FROM investor_statement ORDER BY account_id, month, version DESC)
            SELECT s.account_id, s.month FROM latest s
              JOIN ledger_account l ON l.name = {investors_sql("s.account_id")}
             WHERE EXISTS (
                   SELECT 1 FROM posting p JOIN journal_entry e ON e.id = p.entry_id
                    WHERE p.ledger_account_id = l.id AND e.recorded_at > s.issued_at
                      AND p.effective_at >= s.month AT TIME ZONE 'UTC'
                      AND p.effective_at < (s.month + interval '1 month') AT TIME ZONE 'UTC')
             ORDER BY s.month, s.account_id LIMIT :limit"""), {"limit": limit}).all()  # noqa: S608 — ledger.chart
    return [(r.account_id, r.month) for r in rows]


def issue_corrections(ledger: Ledger, *, progress: Progress | None = None) -> IssueCounts:
    """Issue a corrected statement wherever the books changed an issued month (see `corrections_due`)."""
    counts = IssueCounts()
    due = corrections_due(ledger)
    by_month: dict[date, list[str]] = {}
    for account_id, month in due:
        by_month.setdefault(month, []).append(account_id)
    for month, accounts in sorted(by_month.items()):
        part = issue_month(ledger, month, account_ids=accounts)
        for field in IssueCounts.__struct_fields__:
            setattr(counts, field, getattr(counts, field) + getattr(part, field))
        if progress is not None:
            progress(counts.accounts, len(due))
    return counts


# ------------------------------------------------------------------------------------------ reads

def _latest(c: sa.Connection, account_id: str, month: date) -> Stored | None:
    row = c.execute(sa.text(f"""
        SELECT {STORED_COLUMNS} FROM investor_statement WHERE account_id = :a AND month = :m
         ORDER BY version DESC LIMIT 1"""), {"a": account_id, "m": month}).first()  # noqa: S608 — constants
    return stored(row) if row is not None else None
