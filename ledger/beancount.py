"""The whole ledger (or as of a time) as a Beancount file: an auditor's copy and an independent check.

The file has an `open` for every ledger account, one transaction per journal entry with its postings,
and a `balance` assertion per account on the day after the cut-off, so `bean-check` itself proves that
Beancount's sums of the exported postings equal the ledger's own balances.

Account names: each `:`-separated part is capitalised (`assets:custody:acc-1` → `Assets:Custody:Acc-1`)
and characters Beancount refuses in a name (`_`, `.`) become `-`. Where two ledger names would map to
the same Beancount name (ids that differ only in case or in `_`/`.`/`-`), each of them gets a short hash
of its ledger name appended. The `open` directive keeps the ledger name as metadata (`ledger_name`).

The balance assertions carry an explicit tolerance of zero (`~ 0`): Beancount would otherwise let a
balance be off by one minor unit (it allows twice half the last digit), and the ledger is exact.

Beancount has no time of day: a transaction is dated by the UTC day of the entry's effective time, and
carries the exact time as `effective_at` metadata. Amounts are written at the currency's scale.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TextIO

import sqlalchemy as sa

from ledger.book import Ledger
from ledger.errors import InvalidEntry
from ledger.money import Money
from ledger.times import rfc3339

BATCH_ROWS = 10_000  # postings fetched per round trip while streaming
PROGRESS_EVERY_ENTRIES = 100_000
ROOTS = {"assets": "Assets", "liabilities": "Liabilities", "equity": "Equity", "income": "Income",
         "expenses": "Expenses"}
_REFUSED = re.compile(r"[^A-Za-z0-9-]")


def _component(part: str, *, title: bool) -> str:
    """`title`: every word capitalised (fixed vocabulary like performance-fees); else only the first letter."""
    part = _REFUSED.sub("-", part)
    if title:
        part = "-".join(w[:1].upper() + w[1:] for w in part.split("-"))
    part = part[:1].upper() + part[1:]
    return part if part[:1].isalnum() else f"X{part}"


def _readable(name: str) -> str:
    root, *rest = name.split(":")
    return ":".join([ROOTS[root], *(_component(p, title=i == 0) for i, p in enumerate(rest))])


def account_names(names: list[str]) -> dict[str, str]:
    """Ledger name → Beancount name: deterministic, one-to-one (see the module docstring)."""
    readable = {name: _readable(name) for name in names}
    seen: dict[str, int] = {}
    for target in readable.values():
        seen[target.lower()] = seen.get(target.lower(), 0) + 1
    return {name: (target if seen[target.lower()] == 1
                   else f"{target}-H{hashlib.sha256(name.encode()).hexdigest()[:8]}")
            for name, target in readable.items()}


def _string(text: str) -> str:
    """A Beancount string literal on one line."""
    text = " ".join(text.split())
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _amount(minor: int, currency: str) -> str:
    return f"{Money(minor=minor, currency=currency)} {currency}"


def export(ledger: Ledger, out: TextIO, as_of: datetime | None = None,
           progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write the ledger as Beancount to `out`; the counts of what was written."""
    if as_of is not None and as_of.tzinfo is None:
        raise InvalidEntry(f"time {as_of.isoformat()} has no time zone; give it in UTC")
    counts = {"accounts": 0, "entries": 0, "postings": 0}
    with ledger.engine.connect() as c:
        c.execution_options(isolation_level="REPEATABLE READ")
        c.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            now = c.execute(sa.text("SELECT now()")).scalar_one()
            latest = c.execute(sa.text("SELECT max(effective_at) FROM journal_entry")).scalar()
            cut = as_of.astimezone(UTC) if as_of is not None else max(now, latest or now)
            accounts = c.execute(sa.text("""
                SELECT a.id, a.name, a.type, a.currency, a.created_at,
                       (SELECT min(p.effective_at) FROM posting p WHERE p.ledger_account_id = a.id) AS first_at,
                       b.balance_minor
                  FROM ledger_account a JOIN ledger_balances_as_of(:cut) b ON b.ledger_account_id = a.id
                 ORDER BY a.name"""), {"cut": cut}).all()
            opened = [a for a in accounts
                      if min(a.created_at, a.first_at or a.created_at).astimezone(UTC) <= cut]
            names = account_names([a.name for a in opened])
            by_id = {a.id: a for a in opened}
            write = out.write
            write(f";; invledger export — the ledger as of {rfc3339(cut)}, written {rfc3339(now)}\n")
            write(";; every figure below is copied from postings; the balance assertions at the end are the\n")
            write(";; ledger's own balances, so `bean-check` proves the two agree.\n")
            write('option "title" "invledger"\n')
            for currency in sorted({a.currency for a in opened}):
                write(f'option "operating_currency" "{currency}"\n')
            write("\n")
            for a in opened:
                day = min(a.created_at, a.first_at or a.created_at).astimezone(UTC).date()
                write(f"{day.isoformat()} open {names[a.name]} {a.currency}\n")
                write(f"  ledger_name: {_string(a.name)}\n")
                counts["accounts"] += 1
            write("\n")
            for entry, postings in _entries(c, cut):
                write(f"{entry.effective_at.astimezone(UTC).date().isoformat()} * {_string(entry.kind)} "
                      f"{_string(entry.memo)}\n")
                write(f"  entry_id: {entry.id}\n")
                write(f"  effective_at: {_string(rfc3339(entry.effective_at))}\n")
                if entry.investment_account_id:
                    write(f"  investment_account: {_string(entry.investment_account_id)}\n")
                if entry.reverses_entry_id:
                    write(f"  reverses_entry_id: {entry.reverses_entry_id}\n")
                if entry.recorded_by:
                    write(f"  recorded_by: {_string(entry.recorded_by)}\n")
                for p in postings:
                    account = by_id[p.ledger_account_id]
                    signed = p.amount_minor if p.side == "D" else -p.amount_minor
                    write(f"  {names[account.name]}  {_amount(signed, p.currency)}\n")
                    counts["postings"] += 1
                write("\n")
                counts["entries"] += 1
                if progress and counts["entries"] % PROGRESS_EVERY_ENTRIES == 0:
                    progress(counts["entries"])
            check_day: date = cut.date() + timedelta(days=1)
            write(f";; the ledger's balances as of {rfc3339(cut)} (Beancount checks them at the start of "
                  f"{check_day.isoformat()})\n")
            for a in opened:
                balance = Money(minor=int(a.balance_minor), currency=a.currency)
                write(f"{check_day.isoformat()} balance {names[a.name]}  {balance} ~ 0 {a.currency}\n")
        finally:
            c.rollback()
    return counts


def _entries(c: sa.Connection, cut: datetime) -> Iterator[tuple[sa.Row, list[sa.Row]]]:
    """Entries effective at or before `cut`, in effective-time order, each with its postings (streamed)."""
    result = c.execute(sa.text("""
        SELECT e.id, e.kind, e.memo, e.effective_at, e.investment_account_id, e.reverses_entry_id, e.recorded_by,
               p.ledger_account_id, p.side, p.amount_minor, p.currency
          FROM journal_entry e JOIN posting p ON p.entry_id = e.id
         WHERE e.effective_at <= :cut
         ORDER BY e.effective_at, e.id, p.ledger_account_id, p.seq"""), {"cut": cut},
        execution_options={"stream_results": True, "yield_per": BATCH_ROWS})
    current: sa.Row | None = None
    postings: list[sa.Row] = []
    for row in result:
        if current is None or row.id != current.id:
            if current is not None:
                yield current, postings
            current, postings = row, []
        postings.append(row)
    if current is not None:
        yield current, postings
