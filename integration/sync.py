"""Performance sync and trade back-fill (seed §6.1): book what the webhooks of a day missed, exactly once.

For every account open on day D (not closed, or closed on or after D), fetch from the engine D's closed
trades and D's daily snapshot, and book them through `Bookkeeper.book_trades` (the day's trades in
one transaction; one by one with `book_trade` if that batch is refused as a whole) / `book_performance` —
the webhook path's own code (`integration.booking`): its rules, tables and idempotency keys. So a fact a
webhook already booked is counted as `already`, a missing one is booked once (`filled`), and one that
conflicts with what was recorded is kept out of the books with an alert (`conflicts`). Trades are booked
before the snapshot, so the true-up only covers what the trades do not explain.

Accounts are worked on concurrently (bounded); an account the engine does not answer for is counted as
`unavailable` and makes the run `partial`, so the next attempt for D takes it up again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta

import msgspec

from integration import alerts, runs
from integration.booking import Booking, Bookkeeper
from integration.client import EngineClient, EngineError, EngineNotFound
from ledger import Ledger
from ledger.errors import LedgerError
from ledger.principal import as_caller

log = logging.getLogger("integration.sync")
CONCURRENCY_MAX = 16
Progress = Callable[[int, int], None]


class SyncCounts(msgspec.Struct, kw_only=True):
    accounts: int = 0
    unavailable: int = 0  # the engine did not answer for the account
    unknown: int = 0  # the engine does not know the account
    trades_seen: int = 0  # closed trades of the day at the engine
    trades_filled: int = 0  # booked by this run: the webhook never arrived
    trades_already: int = 0  # booked before (webhook or an earlier run)
    performance_seen: int = 0
    performance_filled: int = 0
    performance_already: int = 0
    performance_missing: int = 0  # the engine has no snapshot for the day
    conflicts: int = 0  # differs from what was recorded: kept for review, alerted
    rejected: int = 0  # the ledger cannot book it (e.g. finer than the currency's scale), alerted
    entries: int = 0  # journal entries posted by this run

    def add(self, other: SyncCounts) -> None:
        for field in self.__struct_fields__:
            setattr(self, field, getattr(self, field) + getattr(other, field))


def sync_account(bookkeeper: Bookkeeper, client: EngineClient, account_id: str, day: date) -> SyncCounts:
    """Fetch and book one account's day. Engine errors propagate (the caller counts them)."""
    counts = SyncCounts(accounts=1)
    trades = client.trades(account_id, day, day, status="closed")
    performance = [p for p in client.performance(account_id, day, day) if p.date == day]

    def tally(booking: Booking, kind: str) -> None:
        if booking.review:
            counts.conflicts += 1
        elif booking.duplicate:  # its entry_ids are the first booking's, not this run's
            setattr(counts, f"{kind}_already", getattr(counts, f"{kind}_already") + 1)
        else:
            counts.entries += len(booking.entry_ids)
            setattr(counts, f"{kind}_filled", getattr(counts, f"{kind}_filled") + 1)

    # the engine may answer more than asked; only D's closed trades of this account are D's business
    todo = sorted((t for t in trades if t.status == "closed" and t.account_id == account_id
                   and t.executed_at.astimezone(UTC).date() == day), key=lambda t: (t.executed_at, t.trade_id))
    counts.trades_seen += len(todo)
    try:  # all of the day's trades in one transaction; one by one if the batch as a whole is refused
        answers: list[Booking | LedgerError | None] = list(bookkeeper.book_trades(account_id, todo)) if todo else []
    except (LedgerError, msgspec.ValidationError) as error:
        log.warning("sync: batch refused, booking one by one", extra={"account_id": account_id,
                                                                     "error": str(error)[:300]})
        answers = [_book(bookkeeper, account_id, f"trade {t.trade_id}", counts,
                         lambda t=t: bookkeeper.book_trade(t)) for t in todo]
    for trade, answer in zip(todo, answers, strict=True):
        if isinstance(answer, LedgerError):
            _rejected(bookkeeper, account_id, f"trade {trade.trade_id}", counts, answer)
        elif answer is not None:
            tally(answer, "trades")
    if not performance:
        counts.performance_missing += 1
    for snapshot in performance[:1]:
        counts.performance_seen += 1
        booked = _book(bookkeeper, account_id, f"the snapshot of {day}", counts,
                       lambda s=snapshot: bookkeeper.book_performance(s))
        if booked is not None:
            tally(booked, "performance")
    return counts


def _book(bookkeeper: Bookkeeper, account_id: str, what: str, counts: SyncCounts,
          book: Callable[[], Booking]) -> Booking | None:
    try:
        return book()
    except (LedgerError, msgspec.ValidationError) as error:
        _rejected(bookkeeper, account_id, what, counts, error)
        return None


def _rejected(bookkeeper: Bookkeeper, account_id: str, what: str, counts: SyncCounts,
              error: Exception) -> None:
    """A fact the ledger cannot book: counted and alerted (once per fact), the rest of the day goes on."""
    counts.rejected += 1
    detail = getattr(error, "detail", str(error))
    with bookkeeper.ledger.engine.begin() as c:
        alerts.raise_alert(c, kind="backfill_rejected", dedup_key=f"backfill-rejected:{account_id}:{what}",
                           message=f"back-fill could not book {what} for {account_id}: {detail}",
                           account_id=account_id)


def sync_day(ledger: Ledger, client: EngineClient, bookkeeper: Bookkeeper, day: date, *,
             progress: Progress | None = None, concurrency: int = CONCURRENCY_MAX) -> SyncCounts:
    """Sync every account of `day` (see the module docstring); returns what was seen and filled."""
    if datetime.combine(day + timedelta(days=1), time.min, UTC) > datetime.now(UTC):
        raise ValueError(f"{day} is not over yet: the sync is for days that have ended")
    accounts = ledger.account_ids_open_since(datetime.combine(day, time.min, UTC))
    total = len(accounts)
    counts = SyncCounts()

    def one(account_id: str) -> SyncCounts:
        try:
            return sync_account(bookkeeper, client, account_id, day)
        except EngineNotFound:
            return SyncCounts(accounts=1, unknown=1)
        except EngineError as error:
            log.warning("sync: engine unavailable for account", extra={"account_id": account_id,
                                                                       "error": error.detail[:300]})
            return SyncCounts(accounts=1, unavailable=1)

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="sync") as pool:
        for done, result in enumerate(pool.map(as_caller(one), accounts), 1):
            counts.add(result)
            if progress is not None:
                progress(done, total)
    return counts


def run(ledger: Ledger, client: EngineClient, bookkeeper: Bookkeeper, day: date, *,
        trigger: runs.Trigger = "schedule", force: bool = False, progress: Progress | None = None,
        concurrency: int = CONCURRENCY_MAX) -> runs.Outcome:
    """The sync of `day` as a run (integration.runs): once per day unless forced; `partial` when some
    accounts could not be fetched (alerted once, resolved by a later complete run)."""
    dedup_key = f"sync:{day.isoformat()}"

    def work(_: runs.Run) -> tuple[runs.FinalStatus, dict[str, object]]:
        counts = sync_day(ledger, client, bookkeeper, day, progress=progress, concurrency=concurrency)
        with ledger.engine.begin() as c:
            if counts.unavailable:
                alerts.raise_alert(c, kind="sync_incomplete", dedup_key=dedup_key,
                                   message=f"performance sync of {day}: the engine did not answer for "
                                           f"{counts.unavailable} of {counts.accounts} accounts; will retry")
            else:
                alerts.resolve_alert(c, dedup_key)
        return ("partial" if counts.unavailable else "done"), msgspec.structs.asdict(counts)

    return runs.execute(ledger.engine, job="sync_performance", run_key=f"sync_performance:{day.isoformat()}",
                        period=day.isoformat(), trigger=trigger, work=work, force=force)
