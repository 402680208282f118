"""Reports over a large book: trial balance and balance sheet (ledger/reports.py) now and as of a past time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from bench.cpu import settle
from bench.history import Book
from bench.report import Result, latency_summary_ms, progress
from ledger import Ledger, reports

REPORT_TARGET_MS = 500  # issue 6: trial balance and balance sheet over 10M postings, 100k accounts
CALLS = 3  # each report is seconds at worst; the median of three
AS_OF_AGO = timedelta(days=365)  # a past time inside the book's three years


SLOW_CALL_S = 2.0  # a report slower than this is timed once: the run must stay within its time budget


def _time(call, calls: int) -> dict[str, float]:
    samples: list[float] = []
    while len(samples) < calls and sum(samples) < SLOW_CALL_S:
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return latency_summary_ms(samples)


def measure(ledger: Ledger, book: Book, *, target_size: str) -> list[Result]:
    """Each report at `now` (cached balances) and as of a year ago (one as-of read per ledger account)."""
    past = datetime.now(UTC) - AS_OF_AGO
    base = {"accounts": book.accounts, "ledger_accounts_in_book": book.ledger_accounts,
            "postings_in_book": book.postings, "book_built_in_s": book.elapsed_s, "book_mode": book.mode,
            "target_is_for": target_size, "settle": settle()}
    cases = {
        "trial_balance.now": (lambda: reports.trial_balance(ledger), "reports.trial_balance(ledger) — cached balances; "
                              "first page of 1,000 rows plus totals over every account"),
        "trial_balance.as_of": (lambda: reports.trial_balance(ledger, past),
                                "reports.trial_balance(ledger, a year ago) — ledger_balance_as_of per account"),
        "balance_sheet.now": (lambda: reports.balance_sheet(ledger), "reports.balance_sheet(ledger)"),
        "balance_sheet.as_of": (lambda: reports.balance_sheet(ledger, past),
                                "reports.balance_sheet(ledger, a year ago)"),
    }
    results = []
    for name, (call, what) in cases.items():
        summary = _time(call, CALLS)
        progress(f"{name} over {book.postings} postings / {book.accounts} accounts: p50 {summary['p50_ms']} ms")
        results.append(Result(name=f"report.{name}", value=summary["p50_ms"], unit="ms", target=REPORT_TARGET_MS,
                              met=summary["p50_ms"] <= REPORT_TARGET_MS,
                              params={**base, "call": what, "calls": summary["calls"], "max_ms": summary["max_ms"]}))
    return results
