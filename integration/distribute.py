"""The monthly distribution job: `ledger.distribution` for every account of a month, with alerts for the deferred.

Each account is its own transaction (ledger.distribution.distribute_account), so a rerun after a crash
books only what is missing. A deferred account raises one alert per account and month (resolved when its
distribution is booked) and makes the run `partial`, so the next attempt takes it up again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import msgspec

from integration import alerts, runs
from ledger import Ledger
from ledger.distribution import (
    Deferred,
    Distribution,
    distribute_account,
    month_bounds,
    month_key,
)
from ledger.money import Money
from ledger.principal import as_caller

log = logging.getLogger("integration.distribute")
CONCURRENCY_MAX = 4  # database work only; a few connections are enough
Progress = Callable[[int, int], None]


class DistributionCounts(msgspec.Struct, kw_only=True):
    accounts: int = 0
    booked: int = 0  # distributions written by this run
    already: int = 0  # written by an earlier run
    fees: int = 0  # booked by this run with a fee > 0
    fee_total: dict[str, str] = {}  # currency -> sum of the fees booked by this run
    deferred: int = 0
    failed: int = 0


def distribute_month(ledger: Ledger, month: date, *, require_snapshot: bool = True,
                     progress: Progress | None = None, concurrency: int = CONCURRENCY_MAX) -> DistributionCounts:
    """Distribute `month` for every account that was open in it (see ledger.distribution)."""
    counts = DistributionCounts()
    totals: dict[str, int] = {}
    accounts = ledger.account_ids_open_since(month_bounds(month)[0])
    total = len(accounts)

    def one(account_id: str) -> Distribution | Deferred | Exception:
        try:
            return ledger.transact(lambda tx: distribute_account(tx, account_id, month,
                                                                 require_snapshot=require_snapshot))
        except Exception as error:  # noqa: BLE001 — one account's failure must not stop the others
            log.exception("distribution failed", extra={"account_id": account_id, "month": month_key(month)})
            return error

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="distribute") as pool:
        for done, (account_id, outcome) in enumerate(zip(accounts, pool.map(as_caller(one), accounts), strict=True),
                                                     1):
            counts.accounts += 1
            dedup_key = f"distribution:{account_id}:{month_key(month)}"
            if isinstance(outcome, Distribution):
                if outcome.replayed:
                    counts.already += 1
                else:
                    counts.booked += 1
                    if outcome.fee_minor:
                        counts.fees += 1
                        totals[outcome.currency] = totals.get(outcome.currency, 0) + outcome.fee_minor
                with ledger.engine.begin() as c:
                    alerts.resolve_alert(c, dedup_key)
            elif isinstance(outcome, Deferred):
                counts.deferred += 1
                with ledger.engine.begin() as c:
                    alerts.raise_alert(c, kind="distribution_deferred", dedup_key=dedup_key,
                                       message=f"distribution of {month_key(month)} deferred: {outcome.reason}",
                                       account_id=account_id, details={"reason": outcome.kind})
            else:
                counts.failed += 1
                with ledger.engine.begin() as c:
                    alerts.raise_alert(c, kind="distribution_failed", dedup_key=dedup_key,
                                       message=f"distribution of {month_key(month)} failed for {account_id}: "
                                               f"{type(outcome).__name__}: {outcome}", account_id=account_id)
            if progress is not None:
                progress(done, total)
    counts.fee_total = {currency: str(Money(minor=minor, currency=currency)) for currency, minor in totals.items()}
    return counts


def run(ledger: Ledger, month: date, *, trigger: runs.Trigger = "schedule", force: bool = False,
        require_snapshot: bool = True, progress: Progress | None = None) -> runs.Outcome:
    """The distribution of `month` as a run (integration.runs): once per month; `partial` while some
    accounts are deferred or failed, so the next attempt takes them up."""
    def work(_: runs.Run) -> tuple[runs.FinalStatus, dict[str, object]]:
        counts = distribute_month(ledger, month, require_snapshot=require_snapshot, progress=progress)
        return ("partial" if counts.deferred or counts.failed else "done"), msgspec.structs.asdict(counts)

    return runs.execute(ledger.engine, job="distribute", run_key=f"distribute:{month_key(month)}",
                        period=month_key(month), trigger=trigger, work=work, force=force,
                        parameters={"require_snapshot": require_snapshot})
