"""The read side: one function per thing the doors show — the API's controllers, the pages, `invledger report`.

Each returns a plain value, mostly the API's JSON body, from which the CSV, the pages and the command line's
tables are made (`readside.tabular`): a door parses its parameters, calls one of these and renders; it
computes nothing. Reads of plain SQL take the engine to read from (the primary's, or a read replica's) and
open their own connection; reads of the books that resolve ledger-account names take the core's `Ledger`
(its name cache), which reads through its own engine. Refusals are `readside.errors` (ledger errors), so
`api/errors.py` maps them in the one place it maps every other.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import msgspec
import sqlalchemy as sa

from integration import outbox, reconcile, runs
from ledger import Ledger, chart, holds
from ledger.errors import UnknownAccount
from ledger.model import ACCOUNT_STATUSES
from ledger.reads import PAGE_LIMIT_MAX, decode_cursor, encode_cursor
from readside import positions as open_positions
from readside import reports, tabular
from readside.errors import InvalidQuery, NotFound

ALERT_STATUSES = ("open", "acknowledged", "resolved")
RUNS_LIMIT_MAX = 100
PROBLEMS_SHOWN_MAX = 200  # a run's lines that are not `matched`, as the reconciliation page lists them


# ------------------------------------------------------------------------------------------ reports

def trial_balance(engine: sa.Engine, as_of: datetime | None = None, *, after: str | None = None,
                  limit: int | None = reports.PAGE_LIMIT_MAX) -> dict[str, Any]:
    """A page of the trial balance by account name, after `after`; its totals cover every ledger account.
    `limit` None: the whole trial balance in one read."""
    return tabular.trial_balance_out(reports.trial_balance(engine, as_of, after=after, limit=limit))


def balance_sheet(engine: sa.Engine, as_of: datetime | None = None) -> dict[str, Any]:
    return tabular.balance_sheet_out(reports.balance_sheet(engine, as_of))


def income_statement(engine: sa.Engine, start: datetime | None, end: datetime | None) -> dict[str, Any]:
    return tabular.income_statement_out(reports.income_statement(engine, start, end))


def performance(engine: sa.Engine, account_id: str, start: date | None = None,
                end: date | None = None) -> dict[str, Any]:
    return tabular.performance_out(reports.performance(engine, account_id, start, end))


# ------------------------------------------------------------------------------- accounts, journal

def accounts(ledger: Ledger, *, status: str | None = None, cursor: str | None = None,
             limit: int = 100) -> dict[str, Any]:
    """Investment accounts by id, `limit` at a time after the id `cursor`."""
    limit = _bounded(limit)
    if status is not None and status not in ACCOUNT_STATUSES:
        raise InvalidQuery("status must be active, paused or closed")
    found = ledger.accounts(status=status, after=cursor, limit=limit)
    available = holds.account_balances(ledger, [a.account_id for a in found])
    return _page([tabular.account_out(a, available.get(a.account_id)) for a in found],
                 found[-1].account_id if len(found) == limit else None)


def account(ledger: Ledger, account_id: str, *, with_holds: bool = False) -> dict[str, Any]:
    """One account with its `available`; `with_holds` adds what open holds reserve (`held`, `open_holds`: the page)."""
    found, balances = ledger.read_only(lambda tx: (tx.account(account_id),
                                                   holds.balances(tx, [account_id]).get(account_id)))
    body = tabular.account_out(found, balances)
    if with_holds and balances is not None:
        body |= {"held": str(balances.held), "open_holds": balances.open_holds}
    return body


def account_holds(ledger: Ledger, account_id: str, *, status: str | None = None, cursor: int | None = None,
                  limit: int = 100) -> dict[str, Any]:
    """An account's withdrawal holds by id, `limit` at a time after the hold id `cursor`."""
    limit = _bounded(limit)
    if status is not None and status not in holds.HOLD_STATUSES:
        raise InvalidQuery("status must be open, posted, voided or expired")
    ledger.account(account_id)  # UnknownAccount for an unknown account
    found = holds.read(ledger, lambda tx: holds.listing(tx, account_id=account_id, status=status, after=cursor,
                                                        limit=limit))
    return _page([tabular.hold_out(h) for h in found], found[-1].hold_id if len(found) == limit else None)


def account_hold(ledger: Ledger, account_id: str, hold_id: int) -> dict[str, Any]:
    hold = holds.read(ledger, lambda tx: holds.get(tx, hold_id))
    if hold.account_id != account_id:
        raise holds.UnknownHold(f"hold {hold_id} does not exist on account {account_id!r}")
    return tabular.hold_out(hold, holds.account_balances(ledger, [account_id])[account_id])


def balance(ledger: Ledger, account_id: str, as_of: datetime | None = None) -> dict[str, Any]:
    """What A's investor is owed, now or as of an effective time; now, also what is `available` (the balance less
    what open withdrawal holds reserve: holds have no as-of)."""
    if as_of is not None:
        return tabular.balance_out(account_id, ledger.balance(account_id, as_of=as_of), as_of)
    # Now: the balance and the available from one statement (holds.balances reads both) — read apart, as they were,
    # it took two connections, and a deposit or a hold between them showed an available that was not balance − held.
    found = holds.account_balances(ledger, [account_id]).get(account_id)
    if found is None:
        raise UnknownAccount(f"investment account {account_id!r} does not exist")
    return {**tabular.balance_out(account_id, found.balance, None), "available": str(found.available)}


def statement(ledger: Ledger, account_id: str, *, start: datetime | None = None, end: datetime | None = None,
              cursor: str | None = None, limit: int = 100) -> dict[str, Any]:
    """A page of investment account A's statement (what its investor is owed, line by line)."""
    try:  # investors:A exists exactly when A does (as ledger.reads.balance): no read of A first
        return ledger_account_statement(ledger, chart.investors(account_id), start=start, end=end, cursor=cursor,
                                        limit=limit)
    except UnknownAccount:  # named as the investment account, not its ledger account
        raise UnknownAccount(f"investment account {account_id!r} does not exist") from None


def ledger_account_statement(ledger: Ledger, name: str, *, start: datetime | None = None,
                             end: datetime | None = None, cursor: str | None = None,
                             limit: int = 100) -> dict[str, Any]:
    """A page of any ledger account's statement: opening balance, lines with running balance, closing balance."""
    return tabular.statement_out(ledger.statement(name, start=start, end=end, cursor=cursor, limit=limit))


def journal(ledger: Ledger, *, account_id: str | None = None, start: datetime | None = None,
            end: datetime | None = None, cursor: str | None = None, limit: int = 100) -> dict[str, Any]:
    """Entries in effective-time order (ties by id), `limit` at a time after `cursor`."""
    limit = _bounded(limit)
    entries = ledger.journal(account_id=account_id, start=start, end=end,
                             after=decode_cursor(cursor) if cursor else None, limit=limit)
    last = entries[-1] if len(entries) == limit else None
    return _page([tabular.entry_out(e) for e in entries], encode_cursor(last.effective_at, last.id) if last else None)


def entry(ledger: Ledger, entry_id: int) -> dict[str, Any]:
    return tabular.entry_out(ledger.entry(entry_id))


def positions(ledger: Ledger, account_id: str, *, days: int = open_positions.DAYS_DEFAULT) -> dict[str, Any]:
    """A's open positions and how its last `days` true-ups split into unrealised and carried."""
    return open_positions.positions_out(open_positions.positions(ledger, account_id, days=days))


# ------------------------------------------------------------------------------- alerts, outbox

def alerts(engine: sa.Engine, *, status: str | None = None, cursor: int | None = None,
           limit: int = 100) -> dict[str, Any]:
    """Alerts newest first (by id), `limit` at a time below the id `cursor` (None or 0: from the newest)."""
    limit = _bounded(limit)
    if status is not None and status not in ALERT_STATUSES:
        raise InvalidQuery("status must be open, acknowledged or resolved")
    with engine.connect() as c:
        rows = [dict(r) for r in c.execute(sa.text("""
            SELECT id, kind, status, account_id, event_key, message, details, created_at, updated_at,
                   acknowledged_at, acknowledged_by, resolved_at
              FROM alert
             WHERE (CAST(:status AS text) IS NULL OR status = :status)
               AND (CAST(:after AS bigint) IS NULL OR id < :after)
             ORDER BY id DESC LIMIT :limit"""), {"status": status, "after": cursor or None, "limit": limit}).mappings()]
    return _page([tabular.alert_out(r) for r in rows], rows[-1]["id"] if len(rows) == limit else None)


def outbox_events(engine: sa.Engine, *, status: str | None = None, cursor: int | None = None,
                  limit: int = 100) -> dict[str, Any]:
    """Notifications owed to the ML Engine, oldest first, `limit` at a time after the id `cursor`."""
    limit = _bounded(limit)
    if status is not None and status not in outbox.STATUSES:
        raise InvalidQuery("status must be pending, delivered or dead")
    rows = outbox.listing(engine, status=status, after=cursor, limit=limit)
    return _page([tabular.outbox_out(r) for r in rows], rows[-1]["id"] if len(rows) == limit else None)


# ----------------------------------------------------------------------------------- reconciliation

def reconciliation_runs(engine: sa.Engine, *, cursor: int | None = None, limit: int = 20) -> dict[str, Any]:
    """Reconciliation runs newest first, `limit` at a time below the run id `cursor` (None or 0: the newest)."""
    limit = _bounded(limit)
    found = runs.listing(engine, "reconcile", before=cursor or None, limit=limit)
    return _page([tabular.run_out(r) for r in found], found[-1].id if len(found) == limit else None)


def reconciliation_run(engine: sa.Engine, run_id: int, *, result: str | None = None, cursor: str | None = None,
                       limit: int = 100) -> dict[str, Any]:
    """A run with a page of its per-account results (after the account id `cursor`)."""
    limit = _bounded(limit)
    run = runs.by_id(engine, run_id)
    if run is None or run.job != "reconcile":
        raise NotFound(f"reconciliation run {run_id} does not exist")
    if result is not None and result not in reconcile.RESULTS:
        raise InvalidQuery(f"result must be one of {', '.join(reconcile.RESULTS)}")
    lines = reconcile.results(engine, run_id, result=result, after=cursor, limit=limit)
    return {**tabular.run_out(run), "results": [line.out() for line in lines],
            "next_cursor": lines[-1].account_id if len(lines) == limit else None}


class ReconciliationLine(msgspec.Struct, frozen=True, kw_only=True):
    """One account in a run (contract §5); money as strings at the currency's scale."""

    account_id: str
    ledger_balance: str | None
    engine_balance: str | None
    difference: str | None  # engine − ledger
    ledger_status: str | None
    engine_status: str | None
    result: str  # matched | break | engine_unavailable | unknown_account | status_mismatch


class ReconciliationRun(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    counts: dict[str, int]  # result -> accounts
    problems: tuple[ReconciliationLine, ...]  # every line whose result is not `matched` (the first 200)


def reconciliation_overview(engine: sa.Engine, limit: int = 20) -> list[ReconciliationRun]:
    """The latest runs, newest first, each with its problem lines (what the reconciliation page shows)."""
    out = []
    found = runs.listing(engine, "reconcile", limit=max(1, min(limit, RUNS_LIMIT_MAX)))
    problems = reconcile.problems_of_runs(engine, [run.id for run in found], limit=PROBLEMS_SHOWN_MAX)  # not per run
    for run in found:
        lines = [ReconciliationLine(**{k: v for k, v in line.out().items() if k in _LINE_FIELDS})
                 for line in problems[run.id]]
        out.append(ReconciliationRun(run_id=str(run.id), started_at=run.started_at or run.created_at,
                                     finished_at=run.finished_at, status=run.status,
                                     counts=tabular.run_out(run)["counts"], problems=tuple(lines)))
    return out


_LINE_FIELDS = set(ReconciliationLine.__struct_fields__)


def _bounded(limit: int) -> int:
    """A page size as the listings beneath read it (1 to PAGE_LIMIT_MAX): a full page is compared with this one —
    with the size as asked, a page cut to the maximum looked like the last (no next cursor), and a limit of 0 was
    an IndexError."""
    return max(1, min(int(limit), PAGE_LIMIT_MAX))


def _page(items: list[dict[str, Any]], next_cursor: object) -> dict[str, Any]:
    """A listing's body: a full page has a next cursor (its last item's), a shorter one is the end."""
    return {"items": items, "next_cursor": next_cursor}
